"""Loading models and tokenizers, and the errors when that fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from checks import FLOAT32_FOLDED, assert_matches

from helpers.models.load import (
    ModelLoadError,
    load_model,
    load_tokenizer,
    pick_device,
    toy_model_notice,
)
from helpers.models.sources import load_gpt2_tokenizer
from helpers.models.toys import DEMO_DESCRIPTION, TOY_MODEL_KEY, ensure_demo_model
from helpers.paths import REPO_ROOT, SHARED_GPT2_TOKENIZER


def test_toy_model_loads_in_compatibility_and_eval_mode_without_gradients(toy_model: Any) -> None:
    assert (toy_model.cfg.n_layers, toy_model.cfg.n_heads, toy_model.cfg.d_model) == (2, 4, 64)
    assert not toy_model.training
    assert not any(p.requires_grad for p in toy_model.parameters())
    assert toy_model.cfg.device == torch.device("cpu") or str(toy_model.cfg.device) == "cpu"


def test_loaded_model_predicts_what_transformers_predicts(toy_model: Any, toy_model_dir: Path) -> None:
    """Compatibility mode changes the weights' form (folded, centred), never the model's distribution."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(toy_model_dir, attn_implementation="eager").eval()
    tokens = torch.tensor([[50256, 2215, 1757, 290, 5335, 1816, 284, 262, 6128, 11, 1757, 2921, 262, 6131, 284]])
    with torch.no_grad():
        expected = reference(tokens).logits.log_softmax(-1)
        actual = toy_model(tokens).log_softmax(-1)
    assert_matches(actual, expected, FLOAT32_FOLDED, what="log-probabilities")
    # folding LayerNorm leaves a real unembedding bias: attributions must count it
    assert toy_model.b_U.abs().max() > 1e-3


def test_toy_model_says_it_is_a_toy(toy_model_dir: Path, tmp_path: Path) -> None:
    notice = toy_model_notice(str(toy_model_dir))
    assert notice is not None and "not GPT-2" in notice
    assert toy_model_notice("gpt2") is None
    assert toy_model_notice(str(tmp_path)) is None


def test_demo_model_is_built_once(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    directory = ensure_demo_model(tmp_path / "demo")
    stamp = (directory / "config.json").stat().st_mtime_ns
    assert ensure_demo_model(tmp_path / "demo") == directory
    assert (directory / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((directory / "config.json").read_text())["n_layer"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-model-")]


def test_a_demo_model_built_by_an_older_suite_is_rebuilt(tmp_path: Path, gpt2_tokenizer: Any) -> None:
    directory = ensure_demo_model(tmp_path / "demo")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, TOY_MODEL_KEY: "an older planted model"}))
    ensure_demo_model(directory)
    assert json.loads((directory / "config.json").read_text())[TOY_MODEL_KEY] == DEMO_DESCRIPTION
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-model-")]


def test_missing_directory_says_how_to_proceed(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value) and "MODEL=/path/to/local/dir" in str(err.value)


def test_directory_without_a_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_tokenizer(str(tmp_path))


def test_unreachable_hub_model_names_the_model_and_the_way_out() -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model("gpt2-no-such-model", device="cpu")
    message = str(err.value)
    assert "gpt2-no-such-model" in message
    assert "HF_HUB_OFFLINE" in message  # the tests run offline, and the message says that is why
    assert "MODEL=/path/to/local/dir" in message
    assert err.value.__suppress_context__  # one message, not the loader's traceback


@pytest.mark.parametrize("cuda, mps, chosen", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(cuda: bool, mps: bool, chosen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each machine has is simulated, so every branch runs here whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(chosen)
    assert pick_device("cpu") == torch.device("cpu")


def test_a_device_this_machine_lacks_or_a_bad_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="DEVICE='cuda' but this machine has no CUDA GPU. Fix: use DEVICE=auto"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="DEVICE='cuda:1' but this machine has no CUDA GPU"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match="DEVICE='mps' but MPS is not available here"):
        pick_device("mps")
    with pytest.raises(ValueError, match="DEVICE='gpu0' is not a device name. Fix: use auto, cpu"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_loads_in_that_dtype_and_predicts_what_float32_predicts(
    dtype: str, toy_model: Any, toy_model_dir: Path, ioi_prompts: Any
) -> None:
    half = load_model(str(toy_model_dir), device="cpu", dtype=dtype)  # type: ignore[arg-type]
    assert {p.dtype for p in half.parameters()} == {getattr(torch, dtype)}
    with torch.no_grad():
        reduced = half(ioi_prompts.clean_tokens).float()
        full = toy_model(ioi_prompts.clean_tokens)
    # rounding of about one unit (eps) of the dtype per operation, accumulated over two layers: measured
    # 6 eps (float16) and 8.5 eps (bfloat16) of the largest logit
    eps, scale = torch.finfo(getattr(torch, dtype)).eps, float(full.abs().max())
    gap = float((reduced - full).abs().max())
    assert 0 < gap <= 20 * eps * scale, (gap, eps * scale)
    assert (reduced.argmax(-1) == full.argmax(-1)).float().mean() > 0.9


def test_an_unknown_dtype_is_named_with_its_fix(toy_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype='float64' is not supported. Fix: use one of float32, float16, bfloat16"):
        load_model(str(toy_model_dir), device="cpu", dtype="float64")  # type: ignore[arg-type]


def test_gpt2_tokenizer_from_the_bpe_files_tokenizes_like_gpt2(tmp_path: Path) -> None:
    tokenizer = load_gpt2_tokenizer(SHARED_GPT2_TOKENIZER)
    assert tokenizer.encode("Hello, world!") == [15496, 11, 995, 0]
    assert tokenizer.encode(" Mary") == [5335]
    tokenizer.save_pretrained(tmp_path)
    assert load_gpt2_tokenizer(tmp_path).encode(" Mary") == [5335]
    with pytest.raises(ModelLoadError, match="neither a saved tokenizer"):
        load_gpt2_tokenizer(tmp_path / "empty")


def test_command_line_reports_an_unreachable_model_without_a_traceback(tmp_path: Path) -> None:
    """The name exists nowhere (hub or cache), the process is offline with an empty cache, and any
    output would go to the test's own folder."""
    result = subprocess.run(
        [sys.executable, "-m", "helpers.run", "--task", "ioi", "--model", "no-such-org/no-such-model",
         "--notebooks-dir", str(tmp_path / "notebooks")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    assert "model 'no-such-org/no-such-model'" in result.stderr and "MODEL=/path/to/local/dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "notebooks").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/self/maps")
def test_weights_copied_out_of_the_checkpoint_file_are_the_same_bits_and_share_as_before(
        toy_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import helpers.models.load

    def sharing(model: Any) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for name, tensor in (*model.named_parameters(remove_duplicate=False),
                             *model.named_buffers(remove_duplicate=False)):
            groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
        return sorted(sorted(names) for names in groups.values())

    with monkeypatch.context() as patch:
        patch.setattr(helpers.models.load, "copy_out_of_checkpoint_files", lambda model: 0)
        model = load_model(str(toy_model_dir), device="cpu")
    before = {name: tensor.clone() for name, tensor in model.state_dict(keep_vars=True).items()}
    shared_before = sharing(model)
    assert helpers.models.load.copy_out_of_checkpoint_files(model) > 0, \
        "nothing read the checkpoint file: this test no longer tests the copy"
    assert helpers.models.load.copy_out_of_checkpoint_files(model) == 0
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert sharing(model) == shared_before
