#!/usr/bin/env bash
# Train the shapes model on a CPU alone (2 cores), then score it: the CPU recipe under trial (docs/shapes.md,
# "Training on a CPU alone", has what it reaches so far; it does not yet reach the shipped model's shape score).
#   bash scripts/shapes_cpu.sh [RUNS] [UNET_STEPS]
# The decoder and the UNet train side by side, one thread each: on 2 cores that beats one job with 2 threads,
# these small models do not scale across threads. What differs from the GPU recipe (scripts/shapes_gpu.sh), each
# for more progress per CPU-second: the decoder takes batches of 16 at lr 2e-3 (3e-3 went faster but spiked near
# step 3,200); the UNet's first level is 32 channels wide (a shape's outline lives in the 16x16 latent) and the
# levels below it stay narrow, (32, 32, 64), 1.2 M parameters; batches of 128; noisy captions (--caption-noise
# 0.25) from the start instead of in a fine-tune. A rerun with the same RUNS resumes both stages from their last
# checkpoints (a larger UNET_STEPS continues the UNet). Writes RUNS/{vae,unet}/ and RUNS/*.log; the model is
# RUNS/unet/model.
set -eu
RUNS=${1:-runs/shapes_cpu}
UNET_STEPS=${2:-6000}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
train="python3 -m impasto.cli train-shapes --device cpu --threads 1 --pool-size 16384 --checkpoint-every 250 --seed 0"
start=$(date +%s)
$train --out "$RUNS/vae" --stage vae --decoder-steps 3000 --decoder-batch-size 16 --decoder-lr 2e-3 \
    >>"$RUNS/vae.log" 2>&1 &
$train --out "$RUNS/unet" --stage unet --unet-channels 32,32,64 --batch-size 128 --lr 1e-3 --ema-decay 0.999 \
    --caption-noise 0.25 --steps "$UNET_STEPS" >>"$RUNS/unet.log" 2>&1
wait
cp "$RUNS/vae/checkpoints/vae.pt" "$RUNS/unet/checkpoints/vae.pt"
python3 -m impasto.cli train-shapes --out "$RUNS/unet" --export-only
echo "trained in $(( $(date +%s) - start )) s"
python3 benchmarks/shapes_eval.py --model "$RUNS/unet/model" -n 200 --guidance default 3 1 \
    --json "$RUNS/unet/eval.json"
