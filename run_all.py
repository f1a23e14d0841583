"""The whole job: per style, train its LoRA (or one LoRA for all styles) -> generate content per prompt -> inject
the style -> <out>/<style>/<Prompt>.png (512x512 RGB), on one or many GPUs (or CPU workers), resumable.

Thin wiring over jstyle.jobs (plan, stages, workers). `--demo` runs everything on the demo model in demo/model
(a toy trained on shapes and textures at 64 px) with the demo data in demo/data on CPU, then scores with check.sh
and packages the submission.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# --demo's settings: the demo model's 64 px, small enough for a 2-core CPU in minutes (any flag overrides them);
# DiffStyle's 20 steps share only label 999 with its 50-step replace schedule: content_replace_step 0 injects on all
# the demo's checker has random-weight backbones: --method auto selects by hist, the one metric without a backbone
DEMO = dict(method="styleid_dreambooth", devices="cpu", size=64, steps=20, train_steps=200, styleid_steps=20,
            diffstyle_steps=20, diffstyle_content_replace_step=0, sdedit_steps=20, styleblend_steps=20, vsp_steps=20,
            guidance=5.0, random_weights=True, select_by="hist")
DEMO_MODEL = ROOT / "demo" / "model"  # made by scripts/train_demo_model.py
HELP_ONLY = ("demo", "config", "no_progress", "no_check", "no_package", "list_recipes")  # not run settings
CONFIG_ONLY = ("train_settings",)  # --config keys without a flag: LoRATrainConfig fields over the preset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """run_all's flags: the run's (defaults from RunConfig) and each method's settings (from the registry)."""
    import dataclasses

    from jstyle import recipes
    from jstyle.jobs.plan import AUTO, DTYPES, LORA_SCOPES, REFERENCE_RULES, SELECT_BY, RunConfig
    from jstyle.methods import registry
    from jstyle.training.timesteps import TIMESTEP_SAMPLINGS

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}

    def dflt(name: str) -> str:
        return f" (default {defaults[name]})"

    methods = "\n".join(f"  {m.name:<19} {m.summary}" for m in registry.METHODS.values())
    p = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n\n")[0],
                                epilog=f"methods (--method):\n{methods}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="the demo model on demo/data (CPU, minutes), then score; "
                   "its settings: " + ", ".join(f"{k}={v}" for k, v in DEMO.items()))
    p.add_argument("--recipe", help="a whole run from jstyle.recipes (" + ", ".join(recipes.RECIPES)
                   + "); --config keys and flags override its settings")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes with their sources and exit")
    p.add_argument("--config", type=Path, help="JSON file of settings (keys as the flags, e.g. \"train_steps\", "
                   "\"styleid_gamma\", and \"train_settings\": {LoRATrainConfig field: value} over the preset); "
                   "flags given on the command line override it")
    p.add_argument("--data", type=Path, help="dataset: <style>/images/*, <style>/prompt.json (default demo/data)")
    p.add_argument("--model", type=Path, help="diffusers Stable Diffusion folder (--demo: demo/model)")
    p.add_argument("--out", type=Path, help="results folder (default outputs/demo, or outputs/<method>)")
    p.add_argument("--method", choices=[*registry.METHODS, AUTO], help="style-transfer method, listed below; auto: "
                   "per style the candidate the checker scores best on a few prompts (see 'method auto' below)"
                   + dflt("method"))
    p.add_argument("--styles", help="e.g. 00-14 or 00,03,07 (default: every style folder)")
    p.add_argument("--devices", help="auto (every GPU, else CPU), cpu, cpu:N (N CPU workers) or GPU ids 0,1,2,3"
                   + dflt("devices"))
    p.add_argument("--preset", help="LoRA recipe: baseline (the challenge's) or strong, multi_module, dreambooth"
                   + dflt("preset"))
    p.add_argument("--backend", choices=("local", "ray"), help="local processes, or Ray actors: a local instance, "
                   "or the cluster at --address (one GPU per cuda worker; --devices 0,1,2,3 asks for 4)"
                   + dflt("backend"))
    p.add_argument("--address", help="ray cluster address, e.g. auto (with --backend ray)")
    p.add_argument("--dtype", choices=DTYPES, help="base model dtype in every stage: auto = float16 on CUDA (LoRA "
                   "training in fp16 mixed precision, dynamic loss scale), float32 on CPU" + dflt("dtype"))
    p.add_argument("--size", type=int, help="generation size in pixels (outputs are saved 512x512)" + dflt("size"))
    p.add_argument("--steps", type=int, help="text-to-image steps" + dflt("steps"))
    p.add_argument("--prompt-template", help="content prompt per object word: {obj} (the word alone) or {instance} "
                   "(the style LoRA's instance prompt) in any text (default: the method's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance" + dflt("guidance"))
    p.add_argument("--scheduler", help="text-to-image and SDEdit sampler: ddim, ddpm, dpm++2m, euler_a, or model "
                   "(the model's scheduler_config.json class)" + dflt("scheduler"))
    p.add_argument("--seed", type=int, help="seed of every stage" + dflt("seed"))
    p.add_argument("--seed-per-style", action=argparse.BooleanOptionalAction,
                   help="generate/inject seed = seed + the style's number (training keeps --seed)"
                   + dflt("seed_per_style"))
    p.add_argument("--shared-noise", action=argparse.BooleanOptionalAction,
                   help="every prompt of a style draws the same noise (from its generate/inject seed); by default "
                   "each image has its own, seeded by (seed, style, object word)" + dflt("shared_noise"))
    p.add_argument("--drop-to-out-at-inference", action=argparse.BooleanOptionalAction,
                   help="train the style LoRA's to_out.0 layers but do not apply them at inference (the JDiffusion "
                   "baseline with stock peft)" + dflt("drop_to_out_at_inference"))
    p.add_argument("--train-steps", type=int, help="LoRA steps (default: the preset's, 500 for baseline)")
    p.add_argument("--train-size", type=int, help="LoRA training resolution in pixels (default: --size)")
    p.add_argument("--lora-scope", choices=LORA_SCOPES, help="style: a LoRA per style; joint: one LoRA trained once "
                   "on every style's references, each style with its own token (style_NN), then every style "
                   "generated from it" + dflt("lora_scope"))
    p.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLINGS, help="LoRA training timesteps: uniform, or "
                   "style-friendly (log-SNR ~ N(-6, 2^2), biased to high noise, CVPR 2025)"
                   + dflt("timestep_sampling"))
    p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="LoRA training recomputes UNet blocks in the backward pass (less memory; same LoRA)")
    p.add_argument("--reference", choices=REFERENCE_RULES, help="reference image for injection" + dflt("reference"))
    p.add_argument("--references", metavar="K|all", help="reference images pooled by the injection (StyleID, VSP): "
                   "the rule's first K, or all; their keys and values concatenated, AdaIN over their pooled "
                   "statistics" + dflt("references"))
    p.add_argument("--reference-size", metavar="native|N|auto", help="how references are read: native (own size, "
                   "no crop), N (centre square resized to N), auto (as the method's source: native for StyleID's "
                   "diffusers variant, else --size)" + dflt("reference_size"))
    p.add_argument("--retries", type=int, help="retries of a failed task" + dflt("retries"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs still go to <out>/logs)")
    p.add_argument("--no-check", action="store_true", help="with --demo: skip scoring")
    p.add_argument("--no-package", action="store_true", help="with --demo: skip writing submission.zip")
    auto = p.add_argument_group("method auto", "Per style each candidate makes --screen-prompts prompts; the "
                                "checker's scorer (loaded once, in the checker env) scores them against the style's "
                                "references; the best wins and makes the rest. 'final' is the official formula with "
                                "the style's own FID: the official FID pools every style, so it cannot be split by "
                                "style (score the submission with check.sh for the official figure). Writes "
                                "<out>/selection.json.")
    auto.add_argument("--candidates", nargs="+", metavar="NAME[:K=V,...]", help="methods or recipes, each with "
                      "optional settings, e.g. styleid styleid:styleid_gamma=0.5 diffstyle jdiffartflow (default: "
                      f"{' '.join(registry.default_candidates())})")
    auto.add_argument("--screen-prompts", type=int, metavar="N", help="prompts per style each candidate makes, a "
                      "seeded draw (all when the style has fewer)" + dflt("screen_prompts"))
    auto.add_argument("--select-by", choices=SELECT_BY, help="the style score that picks (lpips, fid: lower)"
                      + dflt("select_by"))
    auto.add_argument("--score-device", help="the scorer's device: auto, cpu, cuda or cuda:N" + dflt("score_device"))
    auto.add_argument("--checker-weights", help="the checker's weights folder (default $JSTYLE_CHECKER_WEIGHTS)")
    auto.add_argument("--random-weights", action="store_true", default=None, help="the scorer's backbones at random "
                      "(--demo): only --select-by hist is meaningful")
    for cls, users in registry.all_settings().items():
        group = p.add_argument_group(f"{registry.prefix_of(cls)} settings ({cls.__name__}; "
                                     f"--method {', '.join(m.name for m in users)})")
        for st in registry.settings_of(cls):
            kind = dict(action=argparse.BooleanOptionalAction) if st.type is bool else dict(type=st.type)
            group.add_argument(st.flag, dest=st.key, metavar=st.field.upper(),
                               help=f"{st.help} (default {st.shown_default})", **kind)
    return p.parse_args(argv)


def expand_styles(spec: str | None) -> list[str]:
    """'00-02,07' -> ['00', '01', '02', '07'] (ranges keep the zero padding of their start)."""
    from jstyle.errors import ConfigError

    styles: list[str] = []
    for part in filter(None, (s.strip() for s in (spec or "").split(","))):
        lo, sep, hi = part.partition("-")
        if not sep:
            styles.append(part)
        elif lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
            styles += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
        else:
            raise ConfigError(f"--styles {part!r}: use names or ranges like 00-14")
    return styles


def settings(args: argparse.Namespace) -> dict:
    """Defaults < --demo's < --recipe's < --config file < flags given on the command line (train_settings
    merge key by key: a --config "train_settings" entry overrides the recipe's entry of that name)."""
    from jstyle import recipes
    from jstyle.errors import ConfigError

    merged: dict = dict(DEMO) if args.demo else {}
    given: dict = {}
    if args.config:
        try:
            given = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{args.config}: not a readable JSON object of settings ({e})")
        if not isinstance(given, dict):
            raise ConfigError(f"{args.config}: not a JSON object of settings ({{\"key\": value, ...}})")
        known = sorted([k for k in vars(args) if k not in HELP_ONLY] + list(CONFIG_ONLY))
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"{args.config}: unknown setting '{unknown[0]}' (known: {', '.join(known)})")
    name = args.recipe or given.get("recipe")
    if name:
        merged.update(recipes.get(name).settings())
    train = {**merged.get("train_settings", {}), **given.get("train_settings", {})}
    merged.update(given)
    merged.update({k: v for k, v in vars(args).items() if v is not None and k not in HELP_ONLY})
    if train:
        merged["train_settings"] = train
    if args.no_progress:
        merged["progress"] = False
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jstyle.errors import JStyleError

    if args.list_recipes:
        from jstyle.recipes import listing

        print(listing())
        return 0
    try:
        return run(args)
    except JStyleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from jstyle.data import list_styles, read_prompts
    from jstyle.errors import ConfigError
    from jstyle.jobs import parse_workers, run_graph
    from jstyle.jobs.auto import build_auto_graph
    from jstyle.jobs.plan import RunConfig, build_graph
    from jstyle.jobs.stages import LOCAL_STAGES

    s = settings(args)
    s["data"] = str(Path(s.get("data") or ROOT / "demo" / "data"))
    s["out"] = str(Path(s.get("out") or ("outputs/demo" if args.demo else f"outputs/{s.get('method', 'run')}")))
    if not s.get("model"):
        if not args.demo:
            raise ConfigError("--model DIR is required (a diffusers Stable Diffusion folder), or use --demo")
        s["model"] = str(DEMO_MODEL)
    s["model"] = str(s["model"])
    data, out = Path(s["data"]), Path(s["out"])
    wanted = s.pop("styles", None)  # a flag's "00-14" or a config file's list
    styles = list_styles(data, expand_styles(wanted if wanted is None or isinstance(wanted, str) else ",".join(wanted)))
    cfg = RunConfig.from_dict({**s, "styles": tuple(styles)})
    if not Path(cfg.model).is_dir():
        raise ConfigError(f"--model {cfg.model}: folder not found")
    if not cfg.auto and cfg.trains:  # the LoRA settings fail here, in one line, not in every train task
        from jstyle.jobs.stages import train_config

        train_config(cfg, cfg.lora_name(styles[0]), out, "float32")
    if cfg.scheduler == "model":  # the model's scheduler must be one jstyle has
        from jstyle.jobs.plan import scheduler_name
        from jstyle.loading import read_json

        scheduler_name(cfg.scheduler, read_json(Path(cfg.model) / "scheduler" / "scheduler_config.json"))
    graph = (build_auto_graph if cfg.auto else build_graph)(cfg, {st: read_prompts(data / st) for st in styles})
    workers = parse_workers(cfg.devices)
    label = f"{cfg.method} (recipe {cfg.recipe})" if cfg.recipe else cfg.method
    print(f"{label}: {len(styles)} styles, {len(graph)} tasks on {', '.join(workers)} -> {out} "
          f"(logs in {out / 'logs'})", flush=True)
    report = run_graph(graph, "jstyle.jobs.stages:execute", out_dir=out, config=cfg.to_dict(),
                       manifest_config=cfg.hashed(), workers=workers, retries=cfg.retries, progress=cfg.progress,
                       backend=cfg.backend, address=cfg.address, local_stages=LOCAL_STAGES)
    print(f"{len(report.done)} tasks done, {len(report.already_done)} already done, {len(report.failed)} failed, "
          f"{len(report.not_run)} not run ({report.seconds:.0f} s); manifest: {out / 'manifest.json'}")
    for key, error in report.failed.items():
        print(f"failed: {key}: {error} (see {out / 'logs'})", file=sys.stderr)
    if not report.ok:
        return 1
    if args.demo and not args.no_check and timed("scoring", score, cfg, styles) != 0:
        return 1
    if args.demo and not args.no_package:
        return timed("packaging", package, cfg, styles)
    return 0


def timed(label: str, step, *args) -> int:
    """Run one phase of the demo and print its seconds, as set-up does for its phases."""
    import time

    t0 = time.monotonic()
    rc = step(*args)
    print(f"{label}: {time.monotonic() - t0:.0f} s", flush=True)
    return rc


def score(cfg, styles: list[str]) -> int:
    """Score with check.sh in the checker env (demo: random-weight backbones, labelled meaningless)."""
    out = Path(cfg.out)
    cmd = ["bash", str(ROOT / "check.sh"), "--submission", str(out), "--data", cfg.data, "--random-weights",
           "--out", str(out / "result.json"), "--report", str(out / "report.html"), "--styles", ",".join(styles)]
    if cfg.auto:  # the report shows each style's candidates
        cmd += ["--selection", str(out / "selection.json")]
    print("scoring: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def package(cfg, styles: list[str]) -> int:
    cmd = [sys.executable, str(ROOT / "scripts" / "package_submission.py"), cfg.out, "--data", cfg.data,
           "--styles", ",".join(styles), "--zip", str(Path(cfg.out) / "submission.zip")]
    print("packaging: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
