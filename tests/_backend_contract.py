"""The Completion contract every backend must keep (shared by the torch and llama tests)."""

from sbt_core.backends.base import FINISH_REASONS


def assert_completions_follow_contract(backend, out, n_prompts: int, n: int, max_new_tokens: int) -> None:
    """Shapes, finish reasons, and where the end / marker tokens may appear."""
    assert [len(x) for x in out] == [n] * n_prompts
    for comps in out:
        for c in comps:
            assert len(c.token_ids) == len(c.token_logprobs) <= max_new_tokens and c.finish in FINISH_REASONS
            if c.finish == "length":
                assert len(c.token_ids) == max_new_tokens
            if c.finish == "eos":
                assert c.token_ids[-1] == backend.eos_id
            if c.finish == "stop":
                assert c.token_ids[-1] in backend.marker_ids
            assert all(t not in backend.marker_ids and t != backend.eos_id for t in c.token_ids[:-1])


def forward_logprobs(torch_backend, text: str, ids: list[int]) -> list[float]:
    """Log-probs of ``ids`` after ``text`` from one plain forward pass of a torch backend's
    model (no cache, no padding): the reference the sampled log-probs must match."""
    import torch

    head = torch_backend._prompt_ids(text)
    with torch.no_grad():
        logits = torch_backend.model(input_ids=torch.tensor([head + ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(head) - 1:-1], -1)
    return logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()
