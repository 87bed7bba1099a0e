"""Publishing: the model card's Hub header, and the push of `train --push-to-hub` and of `push`, refused
in seconds before any work when it cannot work. Nothing reaches the network: the Hub's answers and the
upload's library calls are replaced, and the rest is the real code."""

import json
import time

import huggingface_hub
import pytest
from huggingface_hub import ModelCard, RepoUrl

from mlm_helpers import hub
from mlm_helpers.config import BOOKCORPUS, ConfigError, make_config
from mlm_helpers.fileio import MARK, write_folder
from mlm_helpers.publish import PublishError, run_plot
from mlm_helpers.training.loop import EvalMetrics
from mlm_helpers.training.outputs import RunResult, model_card
from mlm_helpers.training.run import train

from .families import family_tokenizer
from .test_cli import assert_clean_error, run_in_process
from .test_training import small_config

BEFORE = EvalMetrics(loss=7.25, perplexity=1408.1, top1=0.0125, top5=0.05, tokens=480)
AFTER = EvalMetrics(loss=4.5, perplexity=90.0171, top1=0.2, top5=0.4125, tokens=480)


def fake_result(tmp_path) -> RunResult:
    return RunResult(BEFORE, AFTER, tmp_path / "model", tmp_path / "out", 30, 12.0, "cpu", "no")


def parsed_card(tmp_path, cfg, result, family="bert"):
    tokenizer = family_tokenizer(family)
    path = tmp_path / "README.md"
    path.write_text(model_card(cfg, result, tokenizer.mask_token, family), encoding="utf-8")
    return ModelCard.load(path)


def metrics_by_name(card) -> dict[str, float]:
    return {e.metric_name: e.metric_value for e in card.data.eval_results}


@pytest.mark.parametrize("family, mask", [("bert", "[MASK]"), ("roberta", "<mask>")])
def test_the_card_header_holds_what_the_hub_reads(tmp_path, text_file, family, mask):
    cfg = small_config(tmp_path, text_file)
    card = parsed_card(tmp_path, cfg, fake_result(tmp_path), family)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "fill-mask"
    assert data.mask_token == mask == family_tokenizer(family).mask_token
    assert len(data.widget) == 1 and mask in data.widget[0]["text"]
    assert {"fill-mask", "masked-lm", "mlm_helpers", family} <= set(data.tags)
    # a scratch model on local files: no base model and no Hub dataset; nothing invented
    for absent in ("base_model", "datasets", "language", "license"):
        assert data.to_dict().get(absent) is None, absent
    assert metrics_by_name(card) == {
        "held-out loss after training": AFTER.loss,
        "held-out perplexity after training": AFTER.perplexity,
        "held-out top-1 accuracy after training": AFTER.top1,
        "held-out top-5 accuracy after training": AFTER.top5,
        "held-out loss before training": BEFORE.loss,
        "held-out perplexity before training": BEFORE.perplexity,
        "held-out top-1 accuracy before training": BEFORE.top1,
        "held-out top-5 accuracy before training": BEFORE.top5,
    }
    assert {(e.task_type, e.dataset_type) for e in data.eval_results} == {("fill-mask", "text")}
    assert 'pipeline("fill-mask"' in card.text and "AutoModelForMaskedLM.from_pretrained" in card.text
    assert f"The capital of France is {mask}." in card.text  # the example to run, as in the widget


def test_a_hub_base_model_and_dataset_are_named_and_language_and_license_come_only_from_its_card(
    tmp_path, monkeypatch
):
    cache = tmp_path / "hub_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    cfg = make_config(model="alice/base-bert", push_to_hub="alice/tuned", output_dir=str(tmp_path / "o"))
    card = parsed_card(tmp_path, cfg, fake_result(tmp_path))
    assert card.data.base_model == "alice/base-bert" and card.data.datasets == [BOOKCORPUS]
    assert card.data.language is None and card.data.license is None  # its card is not in the cache
    assert card.data.model_name == "alice/tuned" and 'from_pretrained("alice/tuned")' in card.text
    assert {(e.dataset_type, e.dataset_split) for e in card.data.eval_results} == {(BOOKCORPUS, "train")}

    snapshot = cache / "models--alice--base-bert" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--alice--base-bert" / "refs").mkdir()
    (cache / "models--alice--base-bert" / "refs" / "main").write_text("abc123")
    (snapshot / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\n---\n# Base\n")
    card = parsed_card(tmp_path, cfg, fake_result(tmp_path))
    assert card.data.language == "en" and card.data.license == "apache-2.0"


def test_a_local_base_folder_gives_its_own_base_model_language_and_license(tmp_path, text_file):
    base = tmp_path / "my_bert"
    base.mkdir()
    (base / "README.md").write_text(
        "---\nbase_model: bert-base-uncased\nlanguage: [en, fr]\nlicense: mit\n---\n", encoding="utf-8"
    )
    card = parsed_card(tmp_path, small_config(tmp_path, text_file, model=str(base)), fake_result(tmp_path))
    assert card.data.base_model == "bert-base-uncased"
    assert card.data.language == ["en", "fr"] and card.data.license == "mit"
    (base / "README.md").write_text("No header here.\n", encoding="utf-8")
    card = parsed_card(tmp_path, small_config(tmp_path, text_file, model=str(base)), fake_result(tmp_path))
    assert card.data.base_model == "my_bert" and card.data.license is None


def test_a_run_without_held_out_rows_has_no_model_index(tmp_path, text_file):
    nothing = EvalMetrics(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    result = RunResult(nothing, nothing, tmp_path / "m", tmp_path / "o", 30, 1.0, "cpu", "no")
    card = parsed_card(tmp_path, small_config(tmp_path, text_file), result)
    assert not card.data.eval_results and "model-index" not in card.content


def test_repo_ids_are_checked_when_the_config_is_built(tmp_path):
    assert make_config(push_to_hub="alice/bert-finetuned.v2", hub_private=True).hub_private
    assert make_config(push_to_hub="bert-finetuned").push_to_hub == "bert-finetuned"
    for bad in ("alice/bert/finetuned", "my model", "./bert_finetuned", "alice--x/y", "-alice/x", ""):
        with pytest.raises(ConfigError, match="--push-to-hub .* is not a Hub repo id: write NAME or OWNER/"):
            make_config(push_to_hub=bad)
    with pytest.raises(ConfigError, match="--hub-private is for the repo of --push-to-hub"):
        make_config(hub_private=True)


def never_called(*args, **kwargs):
    raise AssertionError("training started")


def hub_answers(monkeypatch, token="hf_test", role="write"):
    """The Hub reachable (our own seam) and its token check answered, without the network."""
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "whoami", lambda self, token=None: {"auth": {"accessToken": {"role": role}}}
    )


def test_push_is_refused_offline_before_any_work(tmp_path, text_file, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = small_config(tmp_path, text_file, push_to_hub="alice/tiny-bert")
    started = time.perf_counter()
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set. To push, unset HF_HUB_OFFLINE; or drop"):
        train(cfg, loop=never_called)
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "bert_finetuned").exists()

    argv = ["train", "--data-files", str(text_file), "--model", "scratch:tiny", "--push-to-hub", "alice/x"]
    argv += ["--output-dir", str(tmp_path / "outputs"), "--model-dir", str(tmp_path / "bert_finetuned")]
    assert_clean_error(run_in_process(capsys, *argv), "Cannot push to alice/x", "--push-to-hub")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "bert_finetuned").exists()


@pytest.mark.parametrize(
    "token, role, expected",
    [
        (None, "write", "no Hugging Face token found. To push, log in with `hf auth login`, or set HF_TOKEN"),
        ("hf_read", "read", "the Hugging Face token found is read-only"),
    ],
)
def test_push_without_a_usable_token_is_refused_before_any_work(
    tmp_path, text_file, monkeypatch, token, role, expected
):
    hub_answers(monkeypatch, token, role)
    cfg = small_config(tmp_path, text_file, push_to_hub="alice/tiny-bert")
    with pytest.raises(PublishError, match=expected) as refused:
        train(cfg, loop=never_called)
    assert "drop --push-to-hub" in str(refused.value)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "bert_finetuned").exists()


def test_a_token_the_hub_rejects_is_refused_before_any_work(tmp_path, text_file, monkeypatch):
    class Unauthorized(OSError):
        response = type("Response", (), {"status_code": 401})()

    def rejected(self, token=None):
        raise Unauthorized("401 Client Error: Unauthorized")

    hub_answers(monkeypatch)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", rejected)
    with pytest.raises(PublishError, match="token found is invalid or expired. To push, log in"):
        train(small_config(tmp_path, text_file, push_to_hub="alice/tiny-bert"), loop=never_called)
    assert not (tmp_path / "outputs").exists()


def record_uploads(monkeypatch) -> list[dict]:
    """Replace the upload's two library calls with ones that record what they were given."""
    calls = []

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        operations = list(operations)
        paths = {op.path_in_repo: op.path_or_fileobj for op in operations}
        calls.append({"call": "create_commit", "repo_id": repo_id, "paths": paths})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return calls


def test_train_pushes_the_saved_folder_and_its_plot_once_at_the_end(tmp_path, text_file, monkeypatch, capsys):
    hub_answers(monkeypatch)
    calls = record_uploads(monkeypatch)
    cfg = small_config(tmp_path, text_file, max_steps=4, eval_every=0, eval_size=16, log_every=2)
    result = train(cfg.replace(push_to_hub="alice/tiny-bert", hub_private=True))
    saved = tmp_path / "bert_finetuned"
    assert [c["call"] for c in calls] == ["create_repo", "create_commit"]
    assert calls[0] == dict(call="create_repo", repo_id="alice/tiny-bert", private=True, exist_ok=True)
    uploaded = calls[1]["paths"]
    assert set(uploaded) == {p.name for p in saved.iterdir() if p.name != MARK} | {"loss.png"}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(uploaded)
    assert str(uploaded["README.md"]) == str(saved / "README.md")
    assert str(uploaded["loss.png"]) == str(tmp_path / "outputs" / "loss.png")
    assert f"Pushed {saved} to https://huggingface.co/alice/tiny-bert" in capsys.readouterr().out
    # the card of a real run: the Hub header with this run's metrics and the tokenizer's mask
    card = ModelCard.load(saved / "README.md")
    assert metrics_by_name(card)["held-out loss after training"] == result.after.loss
    assert metrics_by_name(card)["held-out top-5 accuracy before training"] == result.before.top5
    assert card.data.mask_token == "[MASK]" and card.data.model_name == "alice/tiny-bert"


def saved_folder(tmp_path, name="bert_finetuned"):
    def fill(folder):
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "README.md").write_text("# card\n")

    return write_folder(tmp_path / name, fill)


def test_push_refuses_a_folder_this_package_did_not_save(tmp_path, capsys):
    own = tmp_path / "my_model"
    own.mkdir()
    (own / "config.json").write_text("{}")
    (own / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "summary.json").write_text("{}")
    for folder in (own, tmp_path / "missing", tmp_path / "outputs"):
        result = run_in_process(capsys, "push", "--model", str(folder), "alice/x")
        assert_clean_error(result, f"{folder} is not a model folder that mlm_helpers saved", "hf upload")
    checkpoint = write_folder(tmp_path / "step-1", lambda f: (f / "model.safetensors").write_bytes(b"w"))
    refused = run_in_process(capsys, "push", "--model", str(checkpoint), "alice/x")
    assert_clean_error(refused, "not a model folder")  # a checkpoint: ours, but no config.json


def test_push_checks_the_repo_id_and_the_hub_first(tmp_path, capsys, monkeypatch):
    folder = saved_folder(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = run_in_process(capsys, "push", "--model", str(folder), "alice/a/b")
    assert_clean_error(bad, "REPO_ID 'alice/a/b' is not a Hub repo id")
    offline = run_in_process(capsys, "push", "--model", str(folder), "alice/x")
    assert_clean_error(offline, "Cannot push to alice/x: HF_HUB_OFFLINE is set")
    assert "drop --push-to-hub" not in offline.stderr
    hub_answers(monkeypatch, token=None)
    assert_clean_error(run_in_process(capsys, "push", "--model", str(folder), "alice/x"), "hf auth login")


def test_push_uploads_the_folder_with_its_own_runs_plot_only(tmp_path, capsys, monkeypatch):
    folder, outputs = saved_folder(tmp_path), tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "loss.png").write_bytes(b"png")
    (outputs / "summary.json").write_text(json.dumps({"config": {"model_dir": str(folder)}}))
    assert run_plot(folder, outputs) == outputs / "loss.png"
    assert run_plot(saved_folder(tmp_path, "other"), outputs) is None  # another run's plot stays
    assert run_plot(folder, tmp_path / "nowhere") is None

    hub_answers(monkeypatch)
    calls = record_uploads(monkeypatch)
    pushed = run_in_process(capsys, "push", "--model", str(folder), "--output-dir", str(outputs), "alice/x")
    assert pushed.returncode == 0, pushed.stderr
    assert calls[0]["private"] is None  # not asked for: the Hub's default, an existing repo unchanged
    assert set(calls[1]["paths"]) == {"config.json", "model.safetensors", "README.md", "loss.png"}
    assert "https://huggingface.co/alice/x" in pushed.stdout


def test_a_failed_upload_says_the_folder_is_saved_and_how_to_push_again(tmp_path, capsys, monkeypatch):
    folder = saved_folder(tmp_path)
    hub_answers(monkeypatch)
    record_uploads(monkeypatch)

    def fails(self, *args, **kwargs):
        raise ConnectionResetError("Connection reset by peer")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", fails)
    result = run_in_process(capsys, "push", "--model", str(folder), "alice/x")
    assert_clean_error(result, "Connection reset by peer", "saved and unchanged", "mlm_helpers push --model")
