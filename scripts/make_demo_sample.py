"""Build ``examples/banking_intents``, the demo's labelled sample: 8 banking intents of CLINC150 (CC BY 3.0).

    python scripts/make_demo_sample.py            # reads ../shared/data/clinc150, writes examples/banking_intents

All of each intent's rows of the chosen intents, as released: CLINC150's train split as ``train.jsonl`` (100 per
intent) and its validation + test splits as ``test.jsonl`` (50 per intent: the held-out rows the demo reports on).
Intents are renamed to one readable word each (distinct first tokens, so one forward pass scores them); the map is
in the sample's README. Banking intents are close to each other ("when is my bill due" against "how much do I owe on
my bill"): the small model guesses poorly zero-shot and LoRA training visibly fixes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# CLINC150 intent → the class name the demo uses.
INTENTS = {
    "balance": "balance",
    "bill_due": "due",
    "pay_bill": "payment",
    "transfer": "transfer",
    "transactions": "history",
    "freeze_account": "freeze",
    "report_fraud": "fraud",
    "interest_rate": "interest",
}
README = """# banking_intents: the demo's sample (8 banking intents of CLINC150)

`make demo` trains and evaluates on this folder. Built by `python scripts/make_demo_sample.py` from CLINC150.

## Source
CLINC150 ("full" release): Stefan Larson, Anish Mahendran, Joseph J. Peper, Christopher Clarke, Andrew Lee, Parker
Hill, Jonathan K. Kummerfeld, Kevin Leach, Michael A. Laurenzano, Lingjia Tang and Jason Mars. 2019. *An Evaluation
Dataset for Intent Classification and Out-of-Scope Prediction.* EMNLP-IJCNLP 2019. The authors' repository
github.com/clinc/oos-eval, file `data/data_full.json` (snapshot commit 828f8093932c8fe6ca7936c3d2e52903b1c523de).

## Licence
CLINC150 is released under the Creative Commons Attribution 3.0 Unported licence (CC BY 3.0,
creativecommons.org/licenses/by/3.0/). This sample is a subset of it, changed as described below; it is shared under
the same licence, with attribution to the authors above.

## What was changed
Only the rows of 8 of the 150 intents are kept, and each intent is renamed to one word (texts untouched):

| class | CLINC150 intent |
|---|---|
{rows}

`train.jsonl`: those intents' rows of CLINC150's train split ({n_train} rows). `test.jsonl`: their rows of its
validation and test splits ({n_test} rows), held out from training. `labels.json`: the class names.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clinc", type=Path, default=ROOT.parent / "shared" / "data" / "clinc150")
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "banking_intents")
    args = parser.parse_args()

    def rows(*splits: str) -> list[dict[str, str]]:
        out = []
        for split in splits:
            for line in (args.clinc / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row["label"] in INTENTS:
                    out.append({"text": row["text"], "label": INTENTS[row["label"]]})
        return out

    train, test = rows("train"), rows("validation", "test")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("train", train), ("test", test)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
        (args.out / f"{name}.jsonl").write_text(text, encoding="utf-8")
    (args.out / "labels.json").write_text(json.dumps(list(INTENTS.values()), indent=1) + "\n")
    table = "\n".join(f"| {name} | `{intent}` |" for intent, name in INTENTS.items())
    (args.out / "README.md").write_text(README.format(rows=table, n_train=len(train), n_test=len(test)))
    print(f"{args.out}: {len(train)} train rows, {len(test)} test rows, {len(INTENTS)} classes")


if __name__ == "__main__":
    main()
