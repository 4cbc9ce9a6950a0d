"""benchmarks/eval_padding.py: the tokens an evaluation pass feeds per example, in data order, by length and
packed."""

from builders import benchmark_script

from bara_pyro.tasks import MultipleChoiceTask


def _row(question: str, label: int) -> dict:
    return {"contexts": [f"Q: {question}?\nA:"] * 2, "continuations": [" yes", " no, it is not"],
            "question": question, "choices": ["yes", "no"], "label": label}


def test_token_counts(smollm_tokenizer):
    task = MultipleChoiceTask(smollm_tokenizer, scoring="cloze")
    short, long = _row("a", 0), _row("a much longer question than the other one is " * 4, 1)
    rows = [short, long, short, long]
    counts = benchmark_script("eval_padding").token_counts(task, rows, batch_size=2)
    lengths = {id(r): task.collate([r]).token_mask.sum(-1) for r in (short, long)}
    real = sum(int(lengths[id(r)].sum()) for r in rows) / 4
    assert counts["real"] == real
    alone = sum(task.collate([r]).inputs["input_ids"].numel() for r in rows) / 4
    assert counts["data_order"] > counts["by_length"] == alone  # batches of two equal rows pad as one row does
    shared = {id(r): int(task.collate([r]).extras["shared_length"][0]) for r in (short, long)}
    packed = sum(shared[id(r)] + int((lengths[id(r)] - shared[id(r)]).sum()) for r in rows) / 4
    assert counts["packed_prefix"] == packed < real
    assert counts["packed"] == packed  # packed batches of two equal rows carry no padding
