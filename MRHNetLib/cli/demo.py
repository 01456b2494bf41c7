"""``mrhnet demo``: the whole flow on the embedded default data.

A simulated brain that no shipped network saw -> the shipped AF, NF and MBP demo networks (or networks
trained on the spot with ``--train``) -> virtual-histology maps -> evaluation report and figures.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

HELD_OUT = "R2"  # the demo networks were trained on brain C1 and its deformations only
# evaluation: the held-out brain gets a test-time shift (MRHNetLib.simulation.shift) drawn from this seed,
# and the ridge / boosting baselines train on the shipped networks' training brains (noise seed 0)
DEMO_SHIFT = 1
BASELINE_BRAINS = ("C1", "C1-d1", "C1-d2")
# --train: small networks trained in seconds (depth 3, --epochs, default 3); every other option is the
# command's config default (MRHNetLib.network.config; fine-tuning at its learning rate 1e-4)
DEMO_TRAINING = {"depth": 3, "epochs": 3}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulated brain -> AF/NF/MBP maps -> evaluation report (no data needed)",
                       description="Simulates a held-out mouse brain from the shipped anatomy, runs the shipped "
                                   "demo networks (AF, NF, MBP), writes the maps, an overlay figure and an "
                                   "evaluation report against the simulated truth, single MRI markers and ridge / "
                                   "gradient-boosting baselines trained on simulated brains.")
    p.add_argument("--out", "-o", default="mrhnet-demo", metavar="DIR", help="output folder (default mrhnet-demo)")
    p.add_argument("--brain", default=HELD_OUT, help=f"simulated brain to analyse (default {HELD_OUT}, held out)")
    p.add_argument("--size", default="medium", help="phantom size: small, medium (default) or full")
    p.add_argument("--seed", type=int, default=7, help="noise seed of the simulated scan")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--train", action="store_true",
                   help="train small AF/NF/MBP networks on simulated brain C1 instead of using the shipped ones")
    p.add_argument("--epochs", type=int, default=DEMO_TRAINING["epochs"],
                   help=f"epochs for --train (default {DEMO_TRAINING['epochs']})")
    p.add_argument("--no-perturbation", action="store_true", help="skip the input-contribution analysis")
    p.add_argument("--shift", type=int, default=DEMO_SHIFT, metavar="SEED",
                   help=f"test-time shift of the held-out brain drawn from SEED (default {DEMO_SHIFT}; physics "
                        f"constants, SNR, bias, hidden factors, misregistration and staining of the truth; "
                        f"see mrhnet phantom --help); 0 for none")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the ridge and gradient-boosting baselines (trained on simulated "
                        f"{', '.join(BASELINE_BRAINS)})")
    p.set_defaults(func=run)


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message[:40], refresh=False)
        bar.refresh()

    return bar, report


def _train_models(out: Path, size: str, epochs: int, device: str) -> list[Path]:
    from ..simulation.phantom import simulate_subject
    from ..network.train import config_for, finetune, train

    subjects = [simulate_subject("C1", seed=0, size=size)]
    bar, report = _bar("train AF")
    with bar:
        af = train(subjects, "af", out / "models" / "mrh-af.mrhnet",
                   config_for("train", **{**DEMO_TRAINING, "epochs": epochs}, device=device), progress=report)
    paths = [Path(af)]
    tune = config_for("finetune", epochs=epochs, device=device)  # depth: the AF network's
    for target in ("nf", "mbp"):
        bar, report = _bar(f"fine-tune {target.upper()}")
        with bar:
            paths.append(Path(finetune(af, subjects, target, out / "models" / f"mrh-{target}.mrhnet", tune,
                                       progress=report)))
    return paths


def run(args: argparse.Namespace) -> int:
    from ..network.catalog import list_models
    from ..errors import MRHNetError
    from ..evaluation.evaluate import evaluate
    from ..network.infer import predict, write_maps
    from ..simulation.phantom import phantom_figure, simulate_subject
    from ..simulation.shift import draw_shift
    from ..display import overlay_figure

    out = Path(args.out)
    start = time.time()
    shipped: list[Path] = []
    if not args.train:  # before anything is written
        demo = {e.target: e.path for e in list_models() if e.kind == "demo"}
        missing = [t for t in ("af", "nf", "mbp") if t not in demo]
        if missing:
            raise MRHNetError(f"shipped demo networks missing for {', '.join(missing)}; run with --train")
        shipped = [demo[t] for t in ("af", "nf", "mbp")]
    if args.shift < 0:
        raise MRHNetError(f"--shift {args.shift}: a positive seed, or 0 for none")
    shift = draw_shift(args.shift) if args.shift else None
    bar, report = _bar(f"simulate {args.brain}")
    with bar:
        subject = simulate_subject(args.brain, seed=args.seed, size=args.size, shift=shift, progress=report)
    subject.save(out / "subject")
    phantom_figure(subject, out / "subject.png")
    print(f"simulated brain {args.brain} {subject.shape} -> {out / 'subject'}")

    models = _train_models(out, args.size, args.epochs, args.device) if args.train else shipped
    print("models: " + ", ".join(str(m) for m in models))

    bar, report = _bar("predict")
    with bar:
        maps = predict(subject, models, device=args.device, progress=report)
    for path in write_maps(maps, out / "maps").values():
        print(f"wrote {path}")
    overlay_figure(subject.images["t2w"], maps, out / "overlays.png", title=f"simulated brain {args.brain}")

    train_brains = [] if args.no_baselines else (["C1"] if args.train else list(BASELINE_BRAINS))
    baseline_train = []
    for brain in train_brains:
        bar, report = _bar(f"simulate {brain} (baselines)")
        with bar:
            baseline_train.append(simulate_subject(brain, seed=0, size=args.size, progress=report))
    label = (f"simulated brain {args.brain} (not real data)"
             + (f" with test-time shift {args.shift} (physics, SNR, bias, hidden factors, misregistration and "
                f"staining of the truth)" if shift else ", no test-time shift")
             + (f"; baselines trained on simulated {', '.join(train_brains)}" if train_brains else "")
             + ("; networks trained here on simulated C1" if args.train else
                "; shipped networks trained on simulated brains (see Resources/networks/demo/README.md)"))
    bar, report = _bar("evaluate")
    with bar:
        ev = evaluate(maps, subject=subject, models=[] if args.no_perturbation else models,
                      baseline_train=baseline_train, data_label=label, device=args.device, progress=report)
    paths = ev.save(out / "report")
    print(f"wrote {paths['md']}, {paths['png']}, {out / 'overlays.png'}")
    print(f"\nVirtual histology of {label}, against its simulated ground truth (inside the brain mask):")
    for t, e in ev.summary["targets"].items():
        n = e["network"]
        best = max(e["markers"].items(), key=lambda kv: kv[1]["auc"], default=None)
        line = (f"  MRH-{t.upper():4s} R^2 {n['r2']:.3f}  r {n['pearson_r']:.3f}  SSIM {n['ssim']:.3f}  "
                f"PSNR {n['psnr_db']:.1f} dB  AUC {n['auc']:.3f}")
        base = e.get("baselines", {})
        if base:
            line += "   baselines R^2: " + ", ".join(f"{k} {b['r2']:.3f}" for k, b in base.items())
        if best:
            line += f"   (best single marker {best[0]}: AUC {best[1]['auc']:.3f})"
        print(line)
    print(f"done in {time.time() - start:.0f} s")
    return 0
