"""impasto vs diffusers on a GPU (issue #8): SD-1.5 at 512x512 and SDXL at 1024x1024, 30 steps, float16,
eager and torch.compile: iterations/s, seconds per image, peak memory, load and compile times, in one
budgeted run.

    python benchmarks/gpu_bench.py --out DIR [--device cuda] [--tiny] [--budget 540] [--models sd15 sdxl]
                                   [--no-compile] [--weights DIR] [--reps 3] [--profile]
    python benchmarks/gpu_bench.py --check [--device cuda]     # parity of both libraries on tiny pipelines

Weights are seeded random at the real sizes (built with diffusers/transformers on the device, saved in float16
in the diffusers layout under --weights, default /tmp/impasto_gpu_weights). Every (model, library, compile)
runs in its own subprocess (fresh CUDA context and peak-memory counter, fresh inductor cache); each result is
appended to DIR/gpu_results.jsonl as it arrives and DIR/GPU_RESULTS.md is rewritten after every job, so a
run cut short still leaves its figures. Jobs whose conservative estimate exceeds the time left are skipped.
--tiny uses tiny configs, float32 and 4 steps (for testing on a CPU with --device cpu).
Needs diffusers and transformers importable (the comparison side); impasto from the repo root.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
PIPES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
SIZE = {"sd15": 512, "sdxl": 1024}
for _k in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_OFFLINE"):
    os.environ.setdefault(_k, "1")
for _k in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
    os.environ.setdefault(_k, "error")
LIBS = ("impasto", "diffusers")
# conservative seconds per job on an H100 (imports, load, warm-up, timed calls; compile with a cold cache)
ESTIMATE = {("prepare", "sd15"): 45, ("prepare", "sdxl"): 80, ("sd15", False): 45, ("sdxl", False): 75,
            ("sd15", True): 100, ("sdxl", True): 150}
TINY_ESTIMATE = 15  # per job on a CPU in --tiny mode, compile x6


def log(*a):
    print(*a, flush=True)


def _tests_path():
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---- building the weights ------------------------------------------------------------------------------
def _text_encoder(hidden, layers, heads, inter, act, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, vocab_size=49408, hidden_act=act,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def _vae(sample_size, scaling_factor, force_upcast):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         sample_size=sample_size, norm_num_groups=32, scaling_factor=scaling_factor,
                         force_upcast=force_upcast).eval()


def build_real(model, device):
    """The real architecture with seeded random weights, as a diffusers pipeline; the models are initialised
    on `device` (schedulers stay outside: their constructors mix torch and numpy)."""
    import diffusers
    import torch
    import tiny

    torch.manual_seed(0)
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if model == "sd15":
        sched = diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **common)
        with torch.device(device):
            unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                                  block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
            vae, te = _vae(512, 0.18215, False), _text_encoder(768, 12, 12, 3072, "quick_gelu")
        return diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=tiny.make_tokenizer(), unet=unet.eval(), scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sched = diffusers.EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                                             prediction_type="epsilon", use_karras_sigmas=False, **common)
    with torch.device(device):
        unet, vae, te, te2 = _sdxl_models()
    return diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tiny.make_tokenizer(),
        tokenizer_2=tiny.make_tokenizer("!"), unet=unet, scheduler=sched)


def _sdxl_models():
    import diffusers

    unet = diffusers.UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816).eval()
    return (unet, _vae(1024, 0.13025, True), _text_encoder(768, 12, 12, 3072, "quick_gelu"),
            _text_encoder(1280, 32, 20, 5120, "gelu", projection=1280))


def unet_inputs(unet, size, dtype, device):
    """One CFG step's UNet inputs (batch 2) for a pipeline generating size x size images."""
    import torch

    cfg = unet.config
    h = size // 8 if size >= 256 else size // 2  # tiny VAEs downsample by 2
    kw = dict(sample=torch.randn(2, cfg.in_channels, h, h, dtype=dtype, device=device),
              timestep=torch.tensor(500, device=device),
              encoder_hidden_states=torch.randn(2, 77, cfg.cross_attention_dim, dtype=dtype, device=device))
    if cfg.addition_embed_type == "text_time":
        text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, text, dtype=dtype, device=device),
                                   "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype,
                                                            device=device)}
    return kw


def matmul_rate(device, tiny_mode) -> float:
    import torch

    n, dtype = (512, torch.float32) if tiny_mode else (8192, torch.float16)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def job_prepare(a):
    """Build and save one model's weights; count its UNet FLOPs per CFG step; GPU facts on request."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _tests_path()
    import tiny

    device, out = a["device"], {"job": "prepare", "model": a["model"]}
    t0 = time.perf_counter()
    if a["info"]:
        import diffusers
        import impasto

        out.update(torch=torch.__version__, diffusers=diffusers.__version__,
                   impasto=getattr(impasto, "__version__", "?"), date=str(datetime.date.today()),
                   gpu=torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
                   cuda=torch.version.cuda, matmul_flops_per_s=matmul_rate(device, a["tiny"]))
    dtype = torch.float32 if a["tiny"] else torch.float16
    if a["tiny"]:
        pipe = tiny.make_sd_pipeline("sd1" if a["model"] == "sd15" else "sdxl").to(device)
    else:
        pipe = build_real(a["model"], device)
    pipe.to(dtype)
    out["build_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    tiny.save_folder(pipe, a["folder"])
    out["save_s"] = time.perf_counter() - t1
    out["params_m"] = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in pipe.components.items()
                       if isinstance(m, torch.nn.Module)}
    with torch.no_grad():
        kw = unet_inputs(pipe.unet, a["size"], dtype, device)
        pipe.unet(**kw)
        with FlopCounterMode(display=False) as counter:
            pipe.unet(**kw)
    out["unet_flops"] = counter.get_total_flops()
    return out


# ---- one measurement -----------------------------------------------------------------------------------
def job_measure(a):
    import torch

    device, lib = a["device"], a["lib"]
    dtype = torch.float32 if a["tiny"] else torch.float16
    t0 = time.perf_counter()
    if lib == "impasto":
        sys.path.insert(0, str(REPO))
        import impasto as module
    else:
        import diffusers as module
    cls = getattr(module, PIPES[a["model"]])
    if lib == "impasto":  # impasto resolves its component classes lazily: count their import as import, not load
        for name in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTextModelWithProjection",
                     "CLIPTokenizer", "PNDMScheduler", "EulerDiscreteScheduler"):
            getattr(module, name)
    t1 = time.perf_counter()
    pipe = cls.from_pretrained(a["folder"], torch_dtype=dtype)
    pipe.to(device)
    sync(device)
    out = {"job": "measure", "model": a["model"], "lib": lib, "compile": a["compile"], "import_s": t1 - t0,
           "load_s": time.perf_counter() - t1}
    pipe.set_progress_bar_config(disable=True)
    if a["compile"]:
        pipe.unet = torch.compile(pipe.unet)
    last = {}

    def call():
        stamps = []

        def on_step_end(p, i, t, kw):
            sync(device)
            stamps.append(time.perf_counter())
            last["latents"] = kw["latents"]
            return {}

        g = torch.Generator(device).manual_seed(0)
        sync(device)
        start = time.perf_counter()
        pipe(PROMPT, height=a["size"], width=a["size"], num_inference_steps=a["steps"], guidance_scale=7.5,
             generator=g, callback_on_step_end=on_step_end)
        sync(device)
        total = time.perf_counter() - start
        return total, (len(stamps) - 1) / (stamps[-1] - stamps[0])

    out["first_call_s"] = call()[0]  # includes compilation when compiled
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    runs = [call() for _ in range(a["reps"])]
    out["s_per_image"] = statistics.median(r[0] for r in runs)
    out["it_s"] = statistics.median(r[1] for r in runs)
    out["runs"] = [[round(x, 4) for x in r] for r in runs]
    if device.startswith("cuda"):
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
    lat = last["latents"].float()
    out["latents_abs_mean"] = lat.abs().mean().item()  # same seed and weights: should agree across libraries
    out["latents_finite"] = bool(torch.isfinite(lat).all())
    if a.get("profile_dir"):
        try:  # a profiler problem must not cost the measurement
            out.update(profile_call(call, a, device))
        except Exception as e:
            out["profile_error"] = f"{type(e).__name__}: {e}"[:300]
    if a["compile"]:  # recompiles or graph breaks would show here
        from torch._dynamo.utils import counters

        out["dynamo"] = {"unique_graphs": counters["stats"]["unique_graphs"],
                         "graph_breaks": sum(counters["graph_break"].values())}
    return out


def profile_call(call, a, device) -> dict:
    """Profile one more call: device-busy time per step (the sum of kernel times) against the step's wall time,
    so a gap between the libraries shows as either more kernel time (the graph) or more idle time (the host).
    Writes the top operators by self device time (self CPU time on a CPU) to profile_<model>_<lib>_<mode>.txt."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        total, it_s = call()
    events = prof.key_averages()
    name = f"profile_{a['model']}_{a['lib']}_{'compiled' if a['compile'] else 'eager'}.txt"
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    Path(a["profile_dir"], name).write_text(f"{total:.4f} s for the call, {it_s:.2f} it/s in the loop\n"
                                            + events.table(sort_by=sort, row_limit=30))
    out = {"profile_file": name, "profile_it_s": it_s}
    if cuda:
        kernel_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
        out["kernel_ms_per_step"] = 1e3 * kernel_s / a["steps"]  # includes text encoding and VAE, a small share
    return out


# ---- parity check on tiny pipelines --------------------------------------------------------------------
def check(device) -> int:
    """Both libraries on the tiny "sd1" and "sdxl" folders, float32 and float16, same latents: max |diff|."""
    import warnings

    import diffusers
    import torch

    _tests_path()
    import impasto
    import tiny

    diffusers.utils.logging.disable_progress_bar()
    warnings.simplefilter("ignore", FutureWarning)
    failures = 0
    tmp = Path(tempfile.mkdtemp(prefix="impasto-check-"))
    for variant, name in (("sd1", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline")):
        folder = tiny.make_sd_folder(tmp, variant)
        for dtype, tol in ((torch.float32, 1e-3), (torch.float16, 2e-2)):
            case = f"{variant} {str(dtype)[6:]} on {device}"
            try:
                images = []
                for module in (impasto, diffusers):
                    pipe = getattr(module, name).from_pretrained(str(folder), torch_dtype=dtype).to(device)
                    pipe.set_progress_bar_config(disable=True)
                    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
                    latents = torch.randn(1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor,
                                          generator=torch.Generator().manual_seed(0)).to(device, dtype)
                    img = pipe("a red square", num_inference_steps=5, guidance_scale=7.5, latents=latents,
                               generator=torch.Generator(device).manual_seed(0), output_type="pt").images
                    if img.device.type != torch.device(device).type:
                        raise AssertionError(f"{module.__name__}: output on {img.device}, expected {device}")
                    images.append(img.float().cpu())
                diff = (images[0] - images[1]).abs().max().item()
                ok = diff <= tol
                failures += not ok
                log(f"check {case}: max abs diff {diff:.2e} (tolerance {tol:g}) {'ok' if ok else 'FAIL'}")
            except Exception:
                failures += 1
                log(f"check {case}: ERROR\n{traceback.format_exc(limit=12)}")
    log("check:", "all ok" if not failures else f"{failures} failure(s)")
    return 1 if failures else 0


# ---- the parent: schedule, record, report --------------------------------------------------------------
def run_job(args: dict, timeout: float, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(args)]
    t0 = time.perf_counter()
    # own process group, so a timeout also ends the job's compile workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s", "stderr_tail": stderr[-1500:]}
    wall = time.perf_counter() - t0
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            res["wall_s"] = wall
            return res
    return {"error": f"exit {proc.returncode}", "stderr_tail": stderr[-3000:], "wall_s": wall}


def fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def table(results: list[dict], info: dict, tiny_mode: bool) -> str:
    rate = info.get("matmul_flops_per_s")
    flops = {r["model"]: r["unet_flops"] for r in results if r.get("job") == "prepare" and "unet_flops" in r}
    meas = {(r["model"], r["lib"], r["compile"]): r for r in results if r.get("job") == "measure" and "it_s" in r}
    lines = [
        "# GPU benchmark: impasto vs diffusers" + (" (--tiny test run)" if tiny_mode else ""), "",
        f"{info.get('date', '?')}, {info.get('gpu', '?')}, torch {info.get('torch', '?')} (CUDA {info.get('cuda')}), "
        f"diffusers {info.get('diffusers', '?')}, impasto {info.get('impasto', '?')}. Seeded random weights at the "
        "real sizes, " + ("float32 tiny configs, 4 steps" if tiny_mode else "float16, 30 steps") + ", 1 image, guidance 7.5, median of timed calls after one warm-up call. it/s: "
        "denoising-loop steps / loop time (step-end callbacks, synchronized; excludes text encoding and VAE "
        "decode). s/image: whole call. Peak: torch.cuda.max_memory_allocated over the timed calls.",
        f"Measured matmul rate: {fmt(rate and rate / 1e12)} TFLOP/s ({'float32 512' if tiny_mode else 'float16 8192'}^3). Floor it/s = that rate / "
        "UNet FLOPs per CFG step (batch 2, torch.utils.flop_counter): the rate at which the GPU's matmul peak "
        "would be reached.", "",
        "| model | library | compile | it/s | s/image | peak GiB | load s | compile+warm-up s | floor it/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, lib, comp), r in meas.items():
        floor = rate / flops[model] if rate and flops.get(model) else None
        lines.append(f"| {model} | {lib} | {'yes' if comp else 'no'} | {fmt(r['it_s'])} | {fmt(r['s_per_image'], '.3f')}"
                     f" | {fmt(r.get('peak_gib'))} | {fmt(r['load_s'])} | {fmt(r['first_call_s'], '.1f')} | "
                     f"{fmt(floor)} |")
    lines += ["", "impasto / diffusers (it/s: higher is better, target >= 1.10; the others: lower is better)", "",
              "| model | compile | it/s | s/image | peak memory | load | compile+warm-up |", "|---|---|---|---|---|---|---|"]
    for (model, lib, comp), r in meas.items():
        d = meas.get((model, "diffusers", comp))
        if lib != "impasto" or d is None:
            continue

        def ratio(k):
            return f"{r[k] / d[k]:.2f}x" if r.get(k) and d.get(k) else ""
        lines.append(f"| {model} | {'yes' if comp else 'no'} | {ratio('it_s')} | {ratio('s_per_image')} | "
                     f"{ratio('peak_gib')} | {ratio('load_s')} | {ratio('first_call_s')} |")
    bad = [r for r in results if "error" in r or r.get("skipped")]
    if bad:
        lines += ["", "Not measured: " + "; ".join(
            f"{r.get('model')} {r.get('lib', r.get('job', ''))} compile={r.get('compile')}: "
            f"{'skipped (budget)' if r.get('skipped') else r['error']}" for r in bad)]
    return "\n".join(lines) + "\n"


def main(a):
    start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "gpu_results.jsonl"
    weights = Path(a.weights or tempfile.gettempdir()) / ("impasto_gpu_weights" + ("_tiny" if a.tiny else ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    results, info = [], {}
    plan = []
    for comp in ([False] if a.no_compile else [False, True]):
        for model in a.models:
            if not comp:
                plan.append([("prepare", model, None, False)])
            plan.append([("measure", model, lib, comp) for lib in LIBS])

    def left():
        return a.budget - (time.perf_counter() - start)

    def record(res):
        results.append(res)
        with jsonl.open("a") as f:
            f.write(json.dumps(res) + "\n")
        (out / "GPU_RESULTS.md").write_text(table(results, info, a.tiny))

    log(f"gpu_bench: device {a.device}, tiny={a.tiny}, budget {a.budget:.0f} s, weights {weights}")
    prepared = set()
    for group in plan:
        kind, model = group[0][0], group[0][1]
        est = TINY_ESTIMATE * (6 if group[0][3] else 1) if a.tiny else ESTIMATE[("prepare", model) if kind == "prepare"
                                                                               else (model, group[0][3])]
        needed = est * len(group)
        if left() < needed or (kind == "measure" and model not in prepared):
            why = "not prepared" if kind == "measure" and model not in prepared else \
                f"{left():.0f} s left < {needed} s estimated"
            for job in group:
                record({"job": job[0], "model": model, "lib": job[2], "compile": job[3], "skipped": why})
                log(f"[{time.perf_counter() - start:5.0f} s] skipped {model} {job[2] or 'prepare'} compile={job[3]}: {why}")
            continue
        for kind, model, lib, comp in group:
            folder = weights / model
            args = dict(job=kind, model=model, lib=lib, compile=comp, folder=str(folder), device=a.device,
                        tiny=a.tiny, size=None if a.tiny else SIZE[model], steps=4 if a.tiny else 30, reps=a.reps,
                        info=not info, profile_dir=str(out) if a.profile else None)
            if a.tiny:
                args["size"] = 32  # the tiny UNets' sample_size 16 x the tiny VAEs' factor 2
            job_env = dict(env)
            if comp:  # a cold inductor cache per job: the same compile work for both libraries
                job_env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
            res = run_job(args, left() - 5, job_env)
            res.setdefault("job", kind)
            res.setdefault("model", model)
            res.setdefault("lib", lib)
            res.setdefault("compile", comp)
            if kind == "prepare" and "error" not in res:
                prepared.add(model)
                if "gpu" in res:
                    info = {k: res[k] for k in ("torch", "diffusers", "impasto", "date", "gpu", "cuda",
                                                "matmul_flops_per_s")}
            record(res)
            t = f"[{time.perf_counter() - start:5.0f} s]"
            if "error" in res:
                log(f"{t} {model} {lib or kind} compile={comp}: ERROR {res['error']}\n{res.get('stderr_tail', '')[-1200:]}")
            elif kind == "prepare":
                log(f"{t} prepared {model}: build {res['build_s']:.1f} s, save {res['save_s']:.1f} s, "
                    f"UNet {res['unet_flops'] / 1e12:.2f} TFLOP/step" +
                    (f", matmul {res['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s on {res['gpu']}" if "gpu" in res else ""))
            else:
                log(f"{t} {model} {lib} compile={comp}: {res['it_s']:.2f} it/s, {res['s_per_image']:.3f} s/image, "
                    f"peak {fmt(res.get('peak_gib'))} GiB, load {res['load_s']:.1f} s, first call "
                    f"{res['first_call_s']:.1f} s, |latents| {res['latents_abs_mean']:.4f}, job {res['wall_s']:.0f} s"
                    + (f", dynamo {res['dynamo']}" if "dynamo" in res else "")
                    + (f", kernels {res['kernel_ms_per_step']:.2f} ms/step" if "kernel_ms_per_step" in res else ""))
    text = table(results, info, a.tiny)
    (out / "GPU_RESULTS.md").write_text(text)
    log(text)
    log(f"total {time.perf_counter() - start:.0f} s; wrote {out / 'GPU_RESULTS.md'} and {jsonl}")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "_work" / "gpu"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny configs, float32, 4 steps (tests the script on a CPU)")
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole run")
    ap.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=list(PIPES))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--weights", default=None, help="folder for the generated weights (default: the temp folder)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--profile", action="store_true",
                    help="profile one extra call per measurement (kernel time per step; tables in --out)")
    ap.add_argument("--check", action="store_true", help="parity of both libraries on tiny pipelines, then exit")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    ns = parse()
    if ns.job:
        job = json.loads(ns.job)
        import torch

        if job["device"] == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result = (job_prepare if job["job"] == "prepare" else job_measure)(job)
        print(json.dumps(result), flush=True)
    elif ns.check:
        sys.exit(check(ns.device))
    else:
        main(ns)
