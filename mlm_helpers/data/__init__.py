"""Text sources -> examples -> masking -> batches: everything training reads."""
