"""Training on a tiny random model: the prefix mask's two properties, bad data, save/reload."""

from __future__ import annotations

import pytest
import torch

from widen_dag.train.dpo import PrefixMaskCollator, dpo_config, train_dpo
from widen_dag.train.preference import PairDataError, common_prefix_length, dpo_loss_terms, validate_pairs
from widen_dag.train.sft import train_sft


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from transformers import AutoTokenizer

    return tiny_checkpoint, AutoTokenizer.from_pretrained(tiny_checkpoint)


def _pairs(n=4):
    shared = "<sub-task>Start with 3, then + 4.</sub-task><thinking>Let me compute. 3 + 4 = 7</thinking>"
    return [
        {
            "problem_id": f"p{i}",
            "prompt": [{"role": "user", "content": f"Ann has 3 apples {i}."}],
            "chosen": [{"role": "assistant", "content": shared + "<answer>The answer is: \\boxed{7}</answer>"}],
            "rejected": [{"role": "assistant", "content": shared + "<double-check>Let me verify. 3 + 4 = 8</double-check>"}],
        }
        for i in range(n)
    ]


def _loss(model_dir, tok, losses, weights, prefix_mask: bool, tmp_path, label_smoothing: float = 0.0):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():  # make policy and reference differ, so the DPO margin is not zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    cfg = dpo_config(
        str(tmp_path),
        beta=0.1,
        learning_rate=1e-3,
        batch_size=4,
        max_length=256,
        label_smoothing=0.0,
        sft_weight=0.0,
        steps=1,
        warmup_ratio=0.0,
        device="cpu",
        seed=0,
        log_every=1,
    )
    cfg.loss_type, cfg.loss_weights, cfg.label_smoothing = losses, weights, label_smoothing
    collator_cls = PrefixMaskCollator if prefix_mask else DataCollatorForPreference
    collator = collator_cls(pad_token_id=tok.pad_token_id, max_length=256, truncation_mode="keep_start")
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _pairs()]
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=cfg,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        data_collator=collator,
    )
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = collator(examples)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
    return float(loss), examples, batch, model


def test_prefix_mask_leaves_the_dpo_loss_unchanged(tiny, tmp_path):
    path, tok = tiny
    plain, *_ = _loss(path, tok, ["sigmoid"], None, False, tmp_path)
    masked, examples, *_ = _loss(path, tok, ["sigmoid"], None, True, tmp_path)
    assert all(common_prefix_length(e["chosen_ids"], e["rejected_ids"]) > 5 for e in examples)  # there is a prefix to mask
    assert masked == pytest.approx(plain, abs=1e-5)


def test_prefix_mask_changes_the_sft_term_by_exactly_the_masked_tokens(tiny, tmp_path):
    path, tok = tiny
    plain, examples, batch, model = _loss(path, tok, ["sft"], [1.0], False, tmp_path)
    masked, _, mbatch, _ = _loss(path, tok, ["sft"], [1.0], True, tmp_path)
    n = len(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"][:n], attention_mask=batch["attention_mask"][:n]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:n, 1:, None])[..., 0]
    full_mask = batch["completion_mask"][:n, 1:].bool()
    kept_mask = mbatch["completion_mask"][:n, 1:].bool()
    assert kept_mask.sum() < full_mask.sum()
    dropped = full_mask & ~kept_mask
    assert dropped.sum().item() == sum(common_prefix_length(e["chosen_ids"], e["rejected_ids"]) for e in examples)
    assert plain == pytest.approx(float(-logps[full_mask].mean()), abs=1e-5)
    assert masked == pytest.approx(float(-logps[kept_mask].mean()), abs=1e-5)
    assert masked != pytest.approx(plain, abs=1e-4)


def _summed_logps(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_cdpo_is_the_conservative_loss_and_differs_from_plain_dpo(tiny, tmp_path, eps):
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    plain, *_ = _loss(path, tok, ["sigmoid"], None, False, tmp_path)
    types, weights = dpo_loss_terms(eps, 0.0)
    cdpo, _, batch, model = _loss(path, tok, types, weights, False, tmp_path, label_smoothing=eps)
    ref = AutoModelForCausalLM.from_pretrained(path)
    policy, reference = _summed_logps(model, batch), _summed_logps(ref, batch)
    n = len(policy) // 2
    x = 0.1 * ((policy[:n] - reference[:n]) - (policy[n:] - reference[n:]))  # beta * margin
    expected = (-(1 - eps) * torch.nn.functional.logsigmoid(x) - eps * torch.nn.functional.logsigmoid(-x)).mean()
    assert cdpo == pytest.approx(float(expected), abs=1e-5)
    assert plain == pytest.approx(float(-torch.nn.functional.logsigmoid(x).mean()), abs=1e-5)
    assert cdpo != pytest.approx(plain, abs=1e-4)


def test_loss_terms_add_the_sft_term_with_its_weight():
    assert dpo_loss_terms(0.0, 0.0) == (["sigmoid"], [1.0])
    assert dpo_loss_terms(0.0, 1.0) == (["sigmoid", "sft"], [1.0, 1.0])
    assert dpo_loss_terms(0.1, 1.0) == (["sigmoid", "robust", "sft"], [1.8, -0.8, 1.0])


def test_bad_pairs_fail_before_training_with_the_row():
    with pytest.raises(PairDataError, match="empty"):
        validate_pairs([])
    bad = _pairs(2)
    bad[1]["rejected"] = bad[1]["chosen"]
    with pytest.raises(PairDataError, match=r"pair 1 \(p1\): chosen and rejected are identical"):
        validate_pairs(bad)


def test_sft_then_joint_masked_dpo_train_save_and_reload_to_generate(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = tiny
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in _pairs(8)]
    stats = train_sft(
        model,
        tok,
        rows,
        output_dir=str(tmp_path / "sft"),
        learning_rate=1e-3,
        batch_size=4,
        max_length=256,
        epochs=1,
        device="cpu",
        group_by_length=True,
    )
    assert stats.steps == 2 and stats.tokens_per_s > 0
    ref = AutoModelForCausalLM.from_pretrained(path)
    d = train_dpo(
        model,
        ref,
        tok,
        _pairs(8),
        output_dir=str(tmp_path / "dpo"),
        beta=0.1,
        learning_rate=1e-4,
        batch_size=4,
        max_length=24,
        epochs=1,
        label_smoothing=0.1,
        sft_weight=1.0,
        prefix_mask=True,
        group_by_length=True,
    )
    assert d.steps == 2 and d.masked_prefix_tokens > 0 and d.losses
    assert d.truncated_pairs == 8  # max_length 24 is shorter than prompt + completion: counted, not hidden
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    tok.save_pretrained(tmp_path / "ckpt")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", use_safetensors=True)
    assert again.config.use_cache
    ids = tok(
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
        add_special_tokens=False,
    )
    out = again.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _sft_rows(n: int) -> list[dict]:
    # Answers of different lengths: batches are padded, and padding is not training.
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 2?"}],
            "completion": [{"role": "assistant", "content": "<answer>" + " ".join([str(i + 2)] * (i + 1)) + "</answer>"}],
        }
        for i in range(n)
    ]


def test_a_run_shorter_than_log_every_still_reports_its_final_loss(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    stats = train_sft(
        model, tok, _sft_rows(4), output_dir=str(tmp_path), learning_rate=1e-3, batch_size=2, max_length=64, log_every=20
    )
    assert stats.steps == 2
    assert stats.final_loss is not None and stats.losses[-1][0] == 2  # the last step, logged though 2 < log_every


def test_sft_tokens_are_the_non_padding_tokens_of_the_rows_trained(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from widen_dag.train.preference import chat_length

    path, tok = tiny
    rows = _sft_rows(3)  # batch 2: one full batch and one of a single row, not 2 x 2 rows
    model = AutoModelForCausalLM.from_pretrained(path)
    stats = train_sft(model, tok, rows, output_dir=str(tmp_path), learning_rate=1e-3, batch_size=2, max_length=64)
    assert stats.steps == 2
    assert stats.tokens == sum(chat_length(tok, r["prompt"] + r["completion"]) for r in rows)


class _ZeRO3Engine(torch.nn.Module):
    """What accelerate's get_state_dict calls under ZeRO-3, which DeepSpeed's engine has and the
    bare model it wraps does not."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def zero_gather_16bit_weights_on_model_save(self) -> bool:
        return True

    def _zero3_consolidated_16bit_state_dict(self) -> dict:
        return {k: v.to(torch.bfloat16) for k, v in self.module.state_dict().items()}


def test_zero3_export_gathers_through_the_deepspeed_engine_and_saves_bf16(tiny, tmp_path):
    import functools
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import AutoModelForCausalLM

    from widen_dag.train.trainer import export_model, save_export

    path, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    # accelerate's own get_state_dict, on an accelerator in DeepSpeed ZeRO-3 mode (no deepspeed here)
    acc = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        deepspeed_config={"zero_optimization": {"stage": 3}},
        unwrap_model=lambda m: m,
    )
    acc.get_state_dict = functools.partial(Accelerator.get_state_dict, acc)
    trainer = SimpleNamespace(accelerator=acc, model=model, model_wrapped=_ZeRO3Engine(model), args=SimpleNamespace(bf16=True))
    exported, state = export_model(trainer)
    assert exported is model and state.keys() == model.state_dict().keys()
    save_export((exported, state), tmp_path / "out")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert saved.dtype == torch.bfloat16 and saved.config.dtype == torch.bfloat16
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name].to(torch.bfloat16)), name


def test_a_bf16_run_saves_bf16_weights(tiny, tmp_path):
    from types import SimpleNamespace

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from widen_dag.train.trainer import export_model, save_export

    path, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(path)  # fp32 master weights, as a DDP full fine-tune holds them
    trainer = SimpleNamespace(
        accelerator=Accelerator(cpu=True), model=model, model_wrapped=model, args=SimpleNamespace(bf16=True)
    )
    save_export(export_model(trainer), tmp_path / "out")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}


def _scalars(log_dir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sft_and_dpo_runs_write_tensorboard_curves_and_dpo_records_its_reward_curves(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    sft = train_sft(
        model,
        tok,
        _sft_rows(4),
        output_dir=str(tmp_path / "sft"),
        learning_rate=1e-3,
        batch_size=2,
        max_length=64,
        log_every=1,
        report_to=["tensorboard"],
        tracking_dir=str(tmp_path / "tb-sft"),
    )
    curves = _scalars(tmp_path / "tb-sft")
    assert [round(v, 4) for v in curves["train/loss"]] == [round(loss, 4) for _, loss in sft.losses]
    ref = AutoModelForCausalLM.from_pretrained(path)
    dpo = train_dpo(
        model,
        ref,
        tok,
        _pairs(4),
        output_dir=str(tmp_path / "dpo"),
        beta=0.1,
        learning_rate=1e-3,
        batch_size=2,
        max_length=256,
        epochs=1,
        label_smoothing=0.0,
        sft_weight=0.0,
        prefix_mask=False,
        report_to=["tensorboard"],
        tracking_dir=str(tmp_path / "tb-dpo"),
    )
    curves = _scalars(tmp_path / "tb-dpo")
    assert {"train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins", "train/rewards/accuracies"} <= set(curves)
    assert set(dpo.reward_curves) == {"chosen", "rejected", "margins", "accuracies"}
    assert [v for _, v in dpo.reward_curves["margins"]] == pytest.approx(curves["train/rewards/margins"], rel=1e-5)
    # No tracker: no event files, nothing else reported.
    train_sft(
        model,
        tok,
        _sft_rows(2),
        output_dir=str(tmp_path / "quiet"),
        learning_rate=1e-3,
        batch_size=2,
        max_length=64,
        report_to=[],
        tracking_dir=str(tmp_path / "tb-none"),
    )
    assert not (tmp_path / "tb-none").exists()


def test_length_batches_cover_every_row_once_per_epoch_with_less_padding_than_random_batches():
    import random

    from widen_dag.train.batching import length_batches

    rng = random.Random(3)
    lengths = [rng.choice([rng.randint(100, 140), rng.randint(180, 240)]) for _ in range(1000)]
    batches = length_batches(lengths, 32, seed=0)
    epoch = [next(batches) for _ in range(32)]  # 1000 rows: 31 full batches and one of 8 per epoch
    assert sorted(i for b in epoch for i in b) == list(range(1000))
    assert sorted(len(b) for b in epoch)[0] == 8

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    random_batches = [shuffled[k : k + 32] for k in range(0, 1000, 32)]
    assert padded(epoch) < 0.8 * padded(random_batches)
    # the next epoch draws other batches
    assert {tuple(b) for b in epoch} != {tuple(next(batches)) for _ in range(32)}


def test_the_length_grouped_sampler_hands_the_trainer_whole_batches_of_similar_length_short_batch_last():
    import random

    from widen_dag.train.batching import LengthGroupedSampler

    rng = random.Random(5)
    lengths = [rng.choice([rng.randint(100, 140), rng.randint(180, 240)]) for _ in range(1000)]
    sampler = LengthGroupedSampler(lengths, 32, seed=1)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(1000)) and len(sampler) == 1000
    chunks = [epoch0[k : k + 32] for k in range(0, 1000, 32)]  # what a DataLoader of batch 32 cuts
    assert len(chunks[-1]) == 1000 % 32  # the short batch comes last, so every chunk is one grouped batch
    spread = [max(lengths[i] for i in c) - min(lengths[i] for i in c) for c in chunks]
    assert max(spread) < 60  # a random batch of 32 mixes ~120- and ~210-token rows
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(1)  # a run resumed in epoch 1 draws that epoch's batches again
    assert list(sampler) == epoch1


def test_length_grouped_sft_trainer_batches_rows_of_similar_length(tiny, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from widen_dag.train.batching import LengthGroupedSampler, length_grouped

    path, tok = tiny
    rows = [r for r in _sft_rows(16) for _ in range(2)]
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=256, use_cpu=True, report_to=[])
    trainer = length_grouped(SFTTrainer)(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    widths = [b["attention_mask"].sum(1) for b in trainer.get_train_dataloader()]
    padded = sum(int(w.max()) * len(w) for w in widths)
    real = sum(int(w.sum()) for w in widths)
    assert padded - real < 0.1 * real  # rows of 16 lengths in pairs: batches of similar length pad little


def test_train_tiny_trains_on_the_completion_and_its_eos_only_and_learns_it(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from widen_dag.train.bootstrap import train_tiny

    path, _ = tiny
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [{"prompt": "<|user|>What is 2 + 3?<|end|><|assistant|>", "completion": "<answer>\\boxed{5}</answer>"}] * 8
    n_prompt = len(tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"])
    seen = []
    forward = model.forward
    model.forward = lambda **kw: seen.append(kw["labels"]) or forward(**kw)
    logged = []
    stats = train_tiny(
        model, tok, rows, steps=30, batch_size=4, learning_rate=1e-2, max_length=128, seed=0, log_every=10, on_log=logged.append
    )
    labels = seen[0][0]
    assert (labels[:n_prompt] == -100).all() and (labels[n_prompt:] != -100).all() and labels[-1] == tok.eos_token_id
    assert stats.steps == 30 and stats.examples == 120 and stats.tokens > 0 and stats.seconds > 0
    assert [s for s, _ in stats.losses] == [10, 20, 30] and stats.losses[-1][1] < stats.losses[0][1] / 4
    assert any(line.startswith("progress: training steps 30/30") for line in logged)
    model.forward = forward
    prompt = tok(rows[0]["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).startswith("<answer>\\boxed{5}")
    with pytest.raises(ValueError, match="tiny training row 0"):
        train_tiny(
            model, tok, [{"prompt": "x", "completion": ""}], steps=1, batch_size=1, learning_rate=1e-3, max_length=16, seed=0
        )
