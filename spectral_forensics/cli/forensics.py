"""The ``audit-rope`` command (and the other forensic commands built on the same inputs)."""

from __future__ import annotations

import argparse

from spectral_forensics.cli.common import index_list, positive_int


def add_parsers(subparsers) -> None:
    """Add ``audit-rope`` to ``subparsers``."""
    audit = subparsers.add_parser(
        "audit-rope",
        help="check whether each head's momentum shear acts before or after RoPE",
        description=(
            "Measure, per layer, key/value head and RoPE band, the transfer function from the "
            "unsheared post-RoPE key to the key attention uses, and compare it with the post-RoPE "
            "and pre-RoPE closed forms. Momentum Attention models are audited as built; other "
            "rotary models get the shear attached at both placements with --gamma."
        ),
    )
    audit.add_argument("--model", help="momentum checkpoint, .gguf file, Hugging Face directory or hub id (default: embedded SmolLM2)")
    audit.add_argument("--gamma", type=float, help="γ to attach to a model without its own shear (required there)")
    audit.add_argument("--text", help="UTF-8 text for models with a tokenizer (default: Shakespeare); others read random tokens")
    audit.add_argument("--layers", type=index_list, help="layers to audit, e.g. 0,5,29 (default: all)")
    audit.add_argument("--tokens", type=positive_int, default=2048, help="tokens to analyse (default: 2048)")
    audit.add_argument("--window", type=positive_int, default=256, help="tokens per forward pass (default: 256)")
    audit.add_argument("--nperseg", type=positive_int, default=64, help="Welch segment length in tokens (default: 64)")
    audit.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass (default: 4)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the random token windows (default: 0)")
    audit.add_argument("--no-plots", action="store_true", help="write metrics and index.html only")
    audit.add_argument("--out", default="audit", help="report directory, replaced atomically (default: audit)")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(func=run_audit)

    induction = subparsers.add_parser(
        "induction",
        help="per-head induction, duplicate-token, previous-token and copying scores",
        description=(
            "Score every head on repeated random tokens drawn from the model's vocabulary (no "
            "tokenizer needed), with repeat lengths that vary within the batch, and on the "
            "eigenvalues of its OV circuit."
        ),
    )
    induction.add_argument("--model", help="checkpoint, .gguf file, Hugging Face directory or hub id (default: embedded SmolLM2)")
    induction.add_argument("--layers", type=index_list, help="layers to score (default: all)")
    induction.add_argument("--batch", type=positive_int, default=32, help="rows of repeated tokens (default: 32)")
    induction.add_argument("--min-len", type=positive_int, default=8, help="minimum repeat length n (default: 8)")
    induction.add_argument("--max-len", type=positive_int, default=24, help="maximum repeat length n (default: 24)")
    induction.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default: 0)")
    induction.add_argument("--out", default="scores", help="output directory, replaced atomically (default: scores)")
    induction.add_argument("--quiet", action="store_true", help="no progress bars")
    induction.set_defaults(func=run_induction)

    report = subparsers.add_parser(
        "report",
        help="spectra, transfer functions, placement audit, orthogonality and induction in one report",
        description=(
            "Run every per-head measurement on one model and write a single sortable report "
            "with a classification of each head (induction, DC-dominated, AC-dominated, mixed)."
        ),
    )
    report.add_argument("--model", help="checkpoint, .gguf file, Hugging Face directory or hub id (default: embedded SmolLM2)")
    report.add_argument("--gamma", type=float, help="γ attached to a plain model for the audit (momentum models use their own)")
    report.add_argument("--text", help="UTF-8 text for models with a tokenizer (default: Shakespeare); others read random tokens")
    report.add_argument("--layers", type=index_list, help="layers (default: all)")
    report.add_argument("--heads", type=index_list, help="query heads (default: all)")
    report.add_argument("--tokens", type=positive_int, default=4096, help="tokens to analyse (default: 4096)")
    report.add_argument("--window", type=positive_int, default=512, help="tokens per forward pass (default: 512)")
    report.add_argument("--nperseg", type=positive_int, default=64, help="Welch segment length in tokens (default: 64)")
    report.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass (default: 4)")
    report.add_argument(
        "--audit-windows", type=positive_int, default=1,
        help="windows the placement audit reads from the analysis pass (default: 1)",
    )
    report.add_argument("--seed", type=int, default=0, help="seed of random token windows and induction rows (default: 0)")
    report.add_argument("--workers", type=positive_int, help="processes drawing the PNGs (default: CPU count)")
    report.add_argument("--no-plots", action="store_true", help="write metrics and index.html only")
    report.add_argument("--out", default="report", help="report directory, replaced atomically (default: report)")
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    report.set_defaults(func=run_report)


def load_windows(loaded, text, tokens: int, window: int, seed: int, nperseg: int):
    """Token windows from a text when the model has a tokenizer, else seeded random token ids."""
    from spectral_forensics.audit import random_windows
    from spectral_forensics.data.text import read_text
    from spectral_forensics.data.windows import tokenize_windows

    if tokens < window:
        raise ValueError(f"tokens={tokens} is less than one window of {window} tokens; raise --tokens or lower --window")
    if window < nperseg:
        raise ValueError(
            f"window={window} is shorter than nperseg={nperseg}; use a longer --window or a smaller --nperseg"
        )
    if loaded.tokenizer is not None:
        source = text if text is not None else "default Shakespeare corpus"
        return tokenize_windows(read_text(text), loaded.tokenizer, window, tokens, source=str(source))
    if text is not None:
        raise ValueError(
            f"Model {loaded.name!r} has no tokenizer, so it cannot read --text {text}; omit --text to "
            "use random token windows."
        )
    vocab = int(loaded.hf_model.config.vocab_size)
    return random_windows(vocab, tokens // window, window, seed)


def run_task_accuracy(model_path):
    """Return ``model -> accuracy`` on the run's own task when ``model_path`` is a training run."""
    from pathlib import Path

    if model_path is None or not (Path(model_path) / "train_config.json").is_file():
        return None
    from spectral_forensics.train import build_task, evaluate_task, load_train_config

    config = load_train_config(Path(model_path))
    task = build_task(config)

    def accuracy(model) -> float:
        metrics = evaluate_task(
            model, task, batches=config.eval_batches,
            batch_size=config.eval_batch_size or config.batch_size,
        )
        return metrics["accuracy"]

    return accuracy


def run_audit(args: argparse.Namespace) -> int:
    """Audit, write the report, print the verdict summary and where the report is."""
    import math

    from spectral_forensics.analysis import validate_indices
    from spectral_forensics.audit import audit_rope_placement
    from spectral_forensics.models import load_model
    from spectral_forensics.report import check_output_dir
    from spectral_forensics.report_audit import summarise, write_audit_report

    if args.gamma is not None and not (math.isfinite(args.gamma) and args.gamma >= 0):
        raise ValueError(f"--gamma {args.gamma} is invalid; use a finite number ≥ 0")
    check_output_dir(args.out)
    loaded = load_model(args.model)
    loaded.rope.require_rope("The RoPE placement audit")
    layers = validate_indices(args.layers, loaded.rope.n_layers, "layers")
    windows = load_windows(loaded, args.text, args.tokens, args.window, args.seed, args.nperseg)
    audit = audit_rope_placement(
        loaded,
        windows,
        gamma=args.gamma,
        layers=layers,
        nperseg=args.nperseg,
        batch_size=args.batch_size,
        task_accuracy=run_task_accuracy(args.model),
        progress=not args.quiet,
    )
    path = write_audit_report(audit, args.out, draw=not args.no_plots)
    if audit.settings.get("task_accuracy"):
        shown = ", ".join(f"{k} {v:.3f}" for k, v in audit.settings["task_accuracy"].items())
        print(f"task accuracy with the shear at each placement: {shown}")
    for label, s in summarise(audit).items():
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
        print(f"{label}: heads consistent with {verdicts}; mean r = {s['mean_r']:.3f}")
    print(f"Audit report: {path / 'index.html'}")
    return 0


def run_induction(args: argparse.Namespace) -> int:
    """Score heads, write the scores, print the strongest induction heads."""
    from spectral_forensics.analysis import validate_indices
    from spectral_forensics.metrics.induction import induction_scores
    from spectral_forensics.models import load_model
    from spectral_forensics.report import check_output_dir
    from spectral_forensics.report_forensics import write_scores

    if args.min_len > args.max_len:
        raise ValueError(f"--min-len {args.min_len} is larger than --max-len {args.max_len}")
    check_output_dir(args.out)
    loaded = load_model(args.model)
    layers = validate_indices(args.layers, loaded.rope.n_layers, "layers")
    scores = induction_scores(
        loaded.bridge, layers, batch=args.batch, min_len=args.min_len, max_len=args.max_len,
        seed=args.seed, progress=not args.quiet,
    )
    path = write_scores(scores, args.out, loaded.name)
    best = max(scores.records(), key=lambda r: r["induction"])
    print(
        f"Scored {len(layers)} layers × {scores.n_heads} heads; strongest induction head "
        f"L{best['layer']}H{best['head']} ({best['induction']:.3f}); scores: {path / 'index.html'}"
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Run every forensic measurement and write the joined report."""
    import math

    from spectral_forensics.analysis import validate_indices
    from spectral_forensics.forensics import run_forensics
    from spectral_forensics.models import load_model
    from spectral_forensics.report import check_output_dir
    from spectral_forensics.report_forensics import write_forensic_report

    if args.gamma is not None and not (math.isfinite(args.gamma) and args.gamma >= 0):
        raise ValueError(f"--gamma {args.gamma} is invalid; use a finite number ≥ 0")
    check_output_dir(args.out)
    loaded = load_model(args.model)
    loaded.rope.require_rope("The forensic report")
    layers = validate_indices(args.layers, loaded.rope.n_layers, "layers")
    heads = validate_indices(args.heads, loaded.rope.n_heads, "heads")
    windows = load_windows(loaded, args.text, args.tokens, args.window, args.seed, args.nperseg)
    source = "random token ids" if loaded.tokenizer is None else (args.text or "default Shakespeare corpus")
    report = run_forensics(
        loaded, windows, text_source=str(source), layers=layers, heads=heads, gamma=args.gamma,
        nperseg=args.nperseg, batch_size=args.batch_size, audit_windows=args.audit_windows,
        progress=not args.quiet,
    )
    path = write_forensic_report(report, args.out, draw=not args.no_plots, workers=args.workers,
                                 progress=not args.quiet)
    counts: dict[str, int] = {}
    for record in report.records():
        counts[record["class"]] = counts.get(record["class"], 0) + 1
    print(f"Classified {sum(counts.values())} heads: {counts}; report: {path / 'index.html'}")
    return 0
