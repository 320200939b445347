"""Write the CPU study's tables into README.md, between ``<!-- study:begin -->`` and ``<!-- study:end -->``,
from the committed reports in logs/mini, and the gap trend over budgets and widths (logs/mini, logs/horizon,
logs/width) between ``<!-- trend:begin -->`` and ``<!-- trend:end -->``, with its figure
logs/mini/plots/gap_trend.png (called by ``bash scripts/mini_repro.sh figures``).

    python scripts/study_readme.py [--study logs/mini] [--readme README.md] [--check]

--check exits 1 (and writes nothing) when README.md's blocks differ from what the reports give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.report import at_chance  # noqa: E402
from experiment import trend  # noqa: E402
from experiment.tables import eval_seed_rows, load_reports, sparsity_deltas, train_seed  # noqa: E402
from utils.cli import REPO, ArgumentParser, UserError, run_main  # noqa: E402
from utils.io import atomic_write, markdown_table  # noqa: E402

MODELS = ("gpt2", "ndgpt2", "gpt2-mlp1536")
METHODS = ("wanda", "magnitude-layer", "magnitude-row")
SETTINGS = ("50%", "60%", "70%", "2:4", "4:8")
BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
TREND_BEGIN, TREND_END = "<!-- trend:begin -->", "<!-- trend:end -->"
TREND_FIGURE = "plots/gap_trend.png"  # in --study


def mean_cell(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    cell = format(statistics.fmean(values), spec)
    return cell + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def compute_hours(study: Path, evals: list[dict], sweeps: list[dict]) -> float:
    """Seconds spent, as the run summaries and reports record them: training + final evals + sweeps."""
    seconds = sum(wall_time(p) for p in study.glob("runs/*/summary.json"))
    seconds += sum(e["timings"]["eval_s"] for e in evals)
    seconds += sum(sum(r["timings"].values()) for r in sweeps)
    seconds += sum(r["timings"]["eval_s"] for r in load_reports(sorted(study.glob("sweep/*/dense.json")), "eval"))
    return seconds / 3600


def wall_time(summary: Path) -> float:
    try:
        return float(json.loads(summary.read_text())["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{summary}: not a train_gpt.py summary with wall_time_s ({type(e).__name__})") from e


def paired_gaps(evals: list[dict], reference: str = "gpt2-mlp1536") -> list[str]:
    """Per model, the val-loss gap to ``reference`` seed by seed: seed k of every model trained on the same
    windows in the same order, so the per-seed difference removes the data order's share of the spread."""
    loss, where = {}, {}
    for e in evals:
        key = e["model"], train_seed(e, e["path"])
        if key in loss:
            raise UserError(f"{where[key]} and {e['path']} both evaluate {key[0]} seed {key[1]}; each seed counts once")
        loss[key], where[key] = e["metrics"]["val_loss"], e["path"]
    rows = []
    for model in dict.fromkeys(m for m, _ in loss):
        gaps = [loss[model, s] - loss[reference, s] for m, s in loss if m == model and (reference, s) in loss]
        if model == reference or not gaps:
            continue
        se = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else None
        rows.append([model, str(len(gaps)), ", ".join(f"{g:+.4f}" for g in gaps), f"{statistics.fmean(gaps):+.4f}",
                     "-" if se is None else f"{se:.4f}"])
    if not rows:
        return []
    return ["The same gap paired by seed (seed k of every model saw the same training windows in the same order):",
            "", markdown_table(["model", "seeds", f"gap to {reference} per seed", "mean", "± s.e."], rows)]


def study_block(study: Path) -> str:
    evals = sorted(load_reports(sorted(study.glob("eval/*.json")), "eval"),
                   key=lambda e: (MODELS.index(e["model"]) if e["model"] in MODELS else len(MODELS), e["source"]))
    sweeps = load_reports(sorted(study.glob("sweep/*/")), "pruning")
    finished = sorted(p.parent.name for p in study.glob("runs/*/summary.json"))
    if not evals:
        raise UserError(f"no final evaluations in {study}/eval yet")
    out = [f"{len(finished)} of {3 * len(MODELS)} training runs finished, {len(evals)} final evaluations, "
           f"{len({(r['model'], r['source']) for r in sweeps})} sparsity sweeps; about "
           f"{compute_hours(study, evals, sweeps):.1f} h of compute as the logs record it, "
           "on 2 cores of an Intel Xeon with AMX "
           f"(`bash scripts/mini_repro.sh` continues anything missing).", ""]

    headers, rows = eval_seed_rows(evals)
    hella = {}
    for e in evals:
        h = e["metrics"]["hellaswag"].get("seed")
        if h:
            hella.setdefault(e["model"], []).append((h["acc_norm"], h["n"]))
    headers.append("HellaSwag acc_norm")
    for row in rows:
        values = hella.get(row[0], [])
        accs = sorted({f"{v:.3f}" for v, _ in values})
        row.append("-" if not values else "–".join(accs[::len(accs) - 1 or 1])
                   + (" (at chance)" if all(at_chance(v, n) for v, n in values) else ""))
    out += ["Held-out val loss of the final models over seeds (524,288 tokens of the 4 val books, fp32; "
            "gap = difference of the means, s.e. of that difference; HellaSwag on the first 1,000 examples, "
            "`seed` convention):", "", markdown_table(headers, rows), ""]

    out += paired_gaps(evals) + [""]

    runs = [[f"{e['model']}-s{train_seed(e, e['path'])}", f"{e['metrics']['params_total']:,}",
             f"{e['metrics']['val_loss']:.4f}", f"{e['metrics']['perplexity']:.1f}"]
            for e in evals]
    out += ["<details><summary>Per run</summary>", "",
            markdown_table(["run", "params", "val loss", "perplexity"], runs), "", "</details>", ""]

    deltas = {(m, method, nm or f"{100 * s:g}%"): v for (m, method, s, nm), v in sparsity_deltas(sweeps).items()}
    swept = {m for m, _, _ in deltas}
    sweep_seeds = {m: sorted({f"{m}-s{train_seed(r, r['path'])}" for r in sweeps if r["model"] == m}) for m in swept}
    rows = [[m, method, *(mean_cell(deltas.get((m, method, s), []), "+.4f") for s in SETTINGS)]
            for m in MODELS if m in swept for method in METHODS]
    out += ["Pruning: Δ val loss against the dense model (65,536 val tokens; swept runs: "
            + ", ".join(r for m in MODELS for r in sweep_seeds.get(m, []))
            + "; 10–40% in `logs/mini/sweep/*/sweep.md`):", "",
            markdown_table(["model", "method", *SETTINGS], rows, n_left=2), ""]
    out += ["![val loss over tokens](logs/mini/plots/val_tokens.png)", "",
            "![pruning sweeps](logs/mini/plots/sparsity.png)", "", ""]
    return "\n".join(out)


def trend_studies(study: Path) -> list[tuple[str, Path]]:
    root = study.parent
    return [("today's study", study), ("one epoch", root / "horizon"), ("wider", root / "width")]


def remade_study(study: Path) -> Path:
    """Seed-1 runs of ``study`` trained again for their checkpoints (not in git): Wanda's mechanism at 4 x 192."""
    return study.parent / f"{study.name}-remade"


def trend_block(study: Path) -> str:
    studies = trend_studies(study)

    def shown(path: Path) -> str:  # from the repository's root, as the README links it, whatever --study looked like
        return Path(os.path.relpath(path.resolve(), REPO)).as_posix()

    rows = trend.trend_rows(studies)
    done = {row[0] for row in rows}
    pending = [f"`{shown(path)}`" for label, path in studies if label not in done]
    out = ["Paired val-loss gap of ndgpt2 to gpt2-mlp1536 at the end of each study (524,288 held-out tokens; "
           "seed k of both models saw the same windows in the same order):", "",
           markdown_table(trend.TREND_HEADERS, rows, n_left=2), ""]
    if pending:
        out += [f"Not finished yet: {', '.join(pending)} (`bash scripts/mini_repro.sh horizon`, `... width`).", ""]
    if rows:
        out += [f"![gap against tokens]({shown(study / TREND_FIGURE)})", ""]
    remade = remade_study(study)
    agreement = trend.agreement_rows(remade, study)
    if agreement:
        out += [f"`{shown(remade)}` holds runs of today's study trained again (the same training code, on another CPU) "
                "for their final checkpoints, which git does not keep; their logs against the committed ones:", "",
                markdown_table(trend.AGREEMENT_HEADERS, agreement), ""]
    mechanism = trend.mechanism_rows([*studies, ("today's study, re-made", remade)])
    if mechanism:
        out += ["Wanda's mechanism, measured: input features of the pruned layers on the 128 calibration windows "
                "(mean share over the layers of features whose largest |x| exceeds 6, LLM.int8's threshold, or "
                "6 standard deviations of that layer's inputs; the median over layers of max/median feature "
                "norm), beside each method's Δ val loss at 70% (`pruning/outliers.py`, `pruning/sweep.py`):", "",
                markdown_table(trend.MECHANISM_HEADERS, mechanism, n_left=2), ""]
    return "\n".join(out + [""])


def fill(text: str, begin: str, end: str, block: str, readme: Path) -> str:
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{readme}: needs one {begin} ... {end} block")
    head, rest = text.split(begin)
    return f"{head}{begin}\n{block}{end}{rest.split(end, 1)[1]}"


def main(argv=None) -> None:
    ap = ArgumentParser(prog="study_readme.py", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=Path("logs/mini"), help="the study's logs (default logs/mini)")
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="the file to update (default README.md)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if the README is out of date")
    args = ap.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {args.readme}: {getattr(e, 'strerror', None) or e}") from e
    new = fill(text, BEGIN, END, study_block(args.study), args.readme)
    new = fill(new, TREND_BEGIN, TREND_END, trend_block(args.study), args.readme)
    if args.check:
        if new != text:
            print(f"{args.readme}: the study block is out of date; run python scripts/study_readme.py")
            sys.exit(1)
        return
    trend.plot_trend(trend_studies(args.study), args.study / TREND_FIGURE)
    if new != text:
        atomic_write(args.readme, new)
    print(f"{args.readme}: study block {'updated' if new != text else 'up to date'}")


if __name__ == "__main__":
    run_main(main, "study_readme.py")
