"""The README's Python usage example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "trainable params" in out and "joint effective rank" in out
    assert (tmp_path / "my_bara_adapter" / "adapter_model.safetensors").exists()


def test_readme_own_data_commands_run(tmp_path, monkeypatch, capsys):
    """The README's train-on-a-CSV (two lines) and export-to-PEFT (one line) commands run as written, on a tiny
    backbone and a few steps (appended overrides), and the export loads with PEFT."""
    import shlex

    import pandas as pd
    from peft import PeftConfig

    from bara_pyro.cli import main

    section = README.read_text().split("## Your own data", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["bara-pyro", "train"], ["bara-pyro", "export"]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BARA_PYRO_CACHE", str(tmp_path / "cache"))
    pd.DataFrame([{"body": f"my invoice {i} was charged twice" if i % 2 else f"the app {i} crashes on start",
                   "category": "billing" if i % 2 else "bug"} for i in range(24)]).to_csv("tickets.csv", index=False)
    fast = ["model=tiny-bert", "train.steps=2", "eval.num_samples=2", "eval.importance_draws=0",
            "eval.gate_examples=4", "train.device=cpu"]
    assert main(commands[0][1:] + [a for s in fast for a in ("--set", s)] + ["--quiet"]) == 0
    assert main(commands[1][1:] + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "classes in index order ['billing', 'bug']" in out and "validation = 2 rows carved" in out
    assert "PEFT LoRA adapter" in out and "max abs difference" in out
    assert PeftConfig.from_pretrained(commands[1][-1]).peft_type == "LORA"
