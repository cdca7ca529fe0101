"""Where each downloadable dataset comes from: canonical URLs pinned to a commit, archives,
licences, and the sha256 every file must have (``data/datasets.sha256``).

Data only, so that dataset readers can point at the download command without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pytest_servebench.errors import ServebenchError

SUMS_FILE = Path(__file__).resolve().parents[1] / "data" / "datasets.sha256"
GH = "https://raw.githubusercontent.com"


class DownloadError(ServebenchError):
    """A file could not be fetched or did not match its pinned checksum."""


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Source:
    """One downloadable set: where its files come from and what they must hash to."""

    name: str
    title: str
    license: str
    license_url: str
    homepage: str
    required: tuple[
        str, ...
    ]  # file paths, or folder prefixes ending in "/", under the datasets dir
    urls: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file -> canonical URL(s)
    archive: Archive | None = None  # required files without a URL come from it
    extras: tuple[str, ...] = ()  # licence and readme files: fetched when available
    notice: str = ""


_GSM8K = f"{GH}/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
_PRM800K = "openai/prm800k/7ecc794703b2877f63226f2477a49b34f9b25163"
_QWEN = f"{GH}/QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465"
_AREAL = f"{GH}/inclusionAI/AReaL/f55fe685c661b0117d888fcae47d6f46e9a85087"
_LLAMA_FACTORY = f"{GH}/hiyouga/LLaMA-Factory/465ee8119aa489a41bee0b01b3c105a2f3dd137f"
_FOUNDRY = f"{GH}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d"
_HUMANEVAL = f"{GH}/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "gsm8k",
            "GSM8K test (1,319 problems)",
            "MIT",
            "https://github.com/openai/grade-school-math/blob/master/LICENSE",
            "https://github.com/openai/grade-school-math",
            ("gsm8k/test.jsonl",),
            {
                "gsm8k/test.jsonl": (f"{_GSM8K}/grade_school_math/data/test.jsonl",),
                "gsm8k/LICENSE": (f"{_GSM8K}/LICENSE",),
            },
            extras=("gsm8k/LICENSE",),
        ),
        Source(
            "math500",
            "MATH-500 (PRM800K test subset, 500 problems)",
            "MIT",
            "https://github.com/openai/prm800k/blob/main/LICENSE",
            "https://github.com/openai/prm800k",
            ("math500/test.jsonl",),
            {
                "math500/test.jsonl": (
                    # The official file is Git LFS; its oid is the pinned sha256.
                    f"https://media.githubusercontent.com/media/{_PRM800K}/prm800k/math_splits/test.jsonl",
                    f"{GH}/hkust-nlp/simpleRL-reason/cf1c7858bfc145a27aa733e75d930d34f0d318a6"
                    "/examples/simplelr_math_eval/data/math500/test.jsonl",
                ),
                "math500/LICENSE": (f"{GH}/{_PRM800K}/LICENSE",),
            },
            extras=("math500/LICENSE",),
        ),
        Source(
            "aime2024",
            "AIME 2024 I and II (30 problems)",
            "MIT for the compilation; problem statements (c) MAA",
            "https://github.com/QwenLM/Qwen2.5-Math",
            "https://github.com/QwenLM/Qwen2.5-Math",
            ("aime2024/test.jsonl",),
            {
                "aime2024/test.jsonl": (f"{_QWEN}/evaluation/data/aime24/test.jsonl",),
                "aime2024/LICENSE": (f"{_QWEN}/evaluation/LICENSE",),
            },
            extras=("aime2024/LICENSE",),
            notice="The problems are (c) MAA: fine for evaluation, not for redistribution as MIT.",
        ),
        Source(
            "aime2025",
            "AIME 2025 I and II (30 problems)",
            "Apache-2.0 for the compilation; problem statements (c) MAA",
            "https://github.com/inclusionAI/AReaL/blob/main/LICENSE",
            "https://github.com/inclusionAI/AReaL",
            ("aime2025/test.jsonl",),
            {
                "aime2025/test.jsonl": (f"{_AREAL}/evaluation/data/aime25/test.jsonl",),
                "aime2025/LICENSE": (f"{_AREAL}/LICENSE",),
            },
            extras=("aime2025/LICENSE",),
            notice="The problems are (c) MAA. Three records have LaTeX mis-escaped in the "
            "source file; the dataset reader restores them (repair_latex).",
        ),
        Source(
            "mmlu",
            "MMLU (57 subjects: dev 285, val 1,531, test 14,042)",
            "MIT",
            "https://github.com/hendrycks/test/blob/master/LICENSE",
            "https://github.com/hendrycks/test",
            ("mmlu/dev/", "mmlu/val/", "mmlu/test/"),
            {
                "mmlu/LICENSE": (
                    f"{GH}/hendrycks/test/4450500f923c49f1fb1dd3d99108a0bd9717b660/LICENSE",
                )
            },
            Archive(
                f"{_LLAMA_FACTORY}/evaluation/mmlu/mmlu.zip",
                "9e2b2d78bf59d80baf271a13005568ef0aca17bd663f2e5ebfecdc07a68f0edc",
                2_336_375,
            ),
            extras=("mmlu/LICENSE", "mmlu/README.txt", "mmlu/possibly_contaminated_urls.txt"),
        ),
        Source(
            "ceval",
            "C-Eval (52 subjects: val 1,346, dev 260)",
            "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
            "https://creativecommons.org/licenses/by-nc-sa/4.0/",
            "https://github.com/hkust-nlp/ceval",
            ("ceval/val/", "ceval/dev/"),
            {
                "ceval/subject_mapping.json": (
                    f"{GH}/hkust-nlp/ceval/cba65ae93bcf189149ced9f66ae0c958201faed9/subject_mapping.json",
                )
            },
            Archive(
                f"{_LLAMA_FACTORY}/evaluation/ceval/ceval.zip",
                "68786deeea68ff089c56563ee48fab8160da857b77b913437bb504d681fd8e20",
                1_548_171,
            ),
            extras=("ceval/subject_mapping.json", "ceval/LICENSE-DATA"),
            notice="C-Eval is licensed CC BY-NC-SA 4.0: non-commercial use only, and what you "
            "derive from it must be shared alike. It is not shipped with pytest-servebench; you "
            "fetch it here for your own evaluation. Licence: "
            "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode",
        ),
        Source(
            "arc_challenge",
            "ARC-Challenge test (1,172 questions, MosaicML's converted form)",
            "CC BY-SA 4.0",
            "https://creativecommons.org/licenses/by-sa/4.0/",
            "https://allenai.org/data/arc",
            ("arc_challenge/test.jsonl",),
            {
                "arc_challenge/test.jsonl": (
                    f"{_FOUNDRY}/scripts/eval/local_data/world_knowledge/arc_challenge.jsonl",
                ),
                "arc_challenge/LICENSE-llm-foundry-Apache-2.0": (f"{_FOUNDRY}/LICENSE",),
            },
            extras=(
                "arc_challenge/LICENSE-CC-BY-SA-4.0.txt",
                "arc_challenge/LICENSE-llm-foundry-Apache-2.0",
            ),
            notice="ARC is CC BY-SA 4.0 (AI2): share derivatives alike.",
        ),
        Source(
            "humaneval",
            "HumanEval (164 Python problems with unit tests, gzip JSONL)",
            "MIT",
            "https://github.com/openai/human-eval/blob/master/LICENSE",
            "https://github.com/openai/human-eval",
            ("humaneval/HumanEval.jsonl.gz",),
            {
                "humaneval/HumanEval.jsonl.gz": (f"{_HUMANEVAL}/data/HumanEval.jsonl.gz",),
                "humaneval/LICENSE": (f"{_HUMANEVAL}/LICENSE",),
            },
            extras=("humaneval/LICENSE",),
            notice="The records hold Python tests; scoring runs model code (in a sandbox: see "
            "docs/code-execution.md).",
        ),
    )
}
ALIASES = {"math": "math500", "aime24": "aime2024", "aime25": "aime2025", "arc": "arc_challenge"}


def pinned_sums(path: Path = SUMS_FILE) -> dict[str, str]:
    """relative path -> sha256, from a ``sha256sum`` style file."""
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, _, name = line.strip().partition("  ")
            sums[name.lstrip("*")] = digest.lower()
    return sums


def files_of(source: Source, sums: dict[str, str]) -> tuple[list[str], list[str]]:
    """(required files, extra files) of a source, each with a pinned sha256."""
    required: list[str] = []
    for item in source.required:
        if item.endswith("/"):
            found = sorted(name for name in sums if name.startswith(item))
            if not found:
                raise DownloadError(f"no pinned files under {item} in {SUMS_FILE}")
            required += found
        elif item in sums:
            required.append(item)
        else:
            raise DownloadError(f"{item} has no pinned sha256 in {SUMS_FILE}")
    extras = [name for name in source.extras if name in sums and name not in required]
    return required, extras
