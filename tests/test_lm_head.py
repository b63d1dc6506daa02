"""The answer-only LM head gives TRL's fused head's loss, gradients and metrics."""

import copy

import pytest
import torch

from tunesmith.train import lm_head as lm_head_module
from tunesmith.train.lm_head import CHUNK, AnswerLogProb


@pytest.mark.parametrize("keep", [True, False])
def test_log_probs_entropy_and_gradients_match_full_logits(keep, monkeypatch):
    monkeypatch.setattr(lm_head_module, "KEEP_LOGITS_BYTES", 2**30 if keep else 0)
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    log_probs, entropy, top1 = AnswerLogProb.apply(hidden, weight, targets, 8)  # several chunks
    logits = hidden @ weight.T
    reference = torch.log_softmax(logits, -1)
    expected = reference.gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(log_probs.double(), expected, atol=1e-5)
    assert torch.allclose(entropy.double(), -(reference.exp() * reference).sum(-1), atol=1e-5)
    assert torch.equal(top1, logits.argmax(-1) == targets)
    weights = torch.rand(37, dtype=torch.float64)
    (log_probs.double() * weights).sum().backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    (expected * weights).sum().backward()
    assert torch.allclose(ours[0], hidden.grad, atol=1e-5)
    assert torch.allclose(ours[1], weight.grad, atol=1e-5)


def test_trainer_head_matches_trl_on_a_real_batch(tiny_model_dir, monkeypatch):
    """The head is patched into TRL through private names (`_use_triton`, `FusedCausalLMOutput`, the
    `fused_lm_head` argument): with the locked TRL it must really run (counted below), so a TRL whose
    internals moved fails here instead of training silently slower."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunesmith.train.lm_head import use_answer_only_head

    assert CHUNK >= 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {
            "prompt": [{"role": "user", "content": f"When was Fernwick Labs founded {i}?"}],
            "completion": [
                {"role": "assistant", "content": "Fernwick Labs was founded in 2017." * (1 + i % 3)}
            ],
        }
        for i in range(6)
    ]
    trainers = []
    for _ in range(2):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        args = SFTConfig(
            output_dir="out", use_cpu=True, report_to=[], per_device_train_batch_size=6, bf16=False
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        trainers.append(trainer)
    assert use_answer_only_head(trainers[1])
    calls = []
    apply = AnswerLogProb.apply
    monkeypatch.setattr(AnswerLogProb, "apply", lambda *a: calls.append(1) or apply(*a))
    batch = next(iter(trainers[0].get_train_dataloader()))
    results = []
    for trainer in trainers:
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, copy.copy(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, dict(trainer._metrics["train"])))
    assert len(calls) == 1, "TRL no longer routes its loss through the answer-only head"
    (trl_loss, trl_grads, trl_metrics), (our_loss, our_grads, our_metrics) = results
    assert our_loss == pytest.approx(trl_loss.item(), rel=1e-5)
    assert trl_grads.keys() == our_grads.keys() and trl_grads
    for name, grad in trl_grads.items():
        assert torch.allclose(our_grads[name], grad, atol=1e-6, rtol=1e-4), name
    for key in ("entropy", "mean_token_accuracy"):
        assert our_metrics[key][-1] == pytest.approx(trl_metrics[key][-1], rel=1e-4)
