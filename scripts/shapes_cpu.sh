#!/usr/bin/env bash
# Train the shapes model on a CPU alone (2 cores), then score it (docs/shapes.md, "Training on a CPU alone", has
# every trial behind this recipe and what each segment scored).
#   bash scripts/shapes_cpu.sh [RUNS]
# The decoder and the UNet train side by side, one thread each: on 2 cores that beats one job with 2 threads,
# these small models do not scale across threads. What differs from the GPU recipe (scripts/shapes_gpu.sh), each
# for more progress per CPU-second: the decoder takes batches of 16 at lr 2e-3; the UNet's first level is 32
# channels wide (a shape's outline lives in the 16x16 latent) and the levels below it stay narrow, (32, 32, 64),
# 1.2 M parameters; batches of 128. The UNet runs in segments, each resuming the last one's checkpoint:
#   1. steps 0-7,000, lr 1e-3, captions that name shape, colour and position wrongly a quarter of the time;
#   2. steps 7,000-18,000, lr 3e-4 then 2e-4, shape named truthfully (the squares are learnt here), the last
#      4,000 steps with half the captions empty (an unconditional branch that follows the shape being drawn);
#   3. a fine-tune (--init-from), 800 steps, all three noisy again, half the captions empty, EMA 0.99: guidance
#      then commits the model to the caption without caricaturing the shapes.
# A rerun with the same RUNS resumes from the checkpoints. Writes RUNS/{vae,unet,final}/ and RUNS/*.log; the model
# is RUNS/final/model.
set -eu
RUNS=${1:-runs/shapes_cpu}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
train="python3 -m impasto.cli train-shapes --device cpu --threads 1 --pool-size 16384 --checkpoint-every 250"
unet="$train --seed 0 --out $RUNS/unet --stage unet --unet-channels 32,32,64 --batch-size 128 --ema-decay 0.999
    --caption-noise 0.25"
start=$(date +%s)
$train --seed 0 --out "$RUNS/vae" --stage vae --decoder-steps 9000 --decoder-batch-size 16 --decoder-lr 2e-3 \
    >>"$RUNS/vae.log" 2>&1 &
{
    $unet --lr 1e-3 --steps 7000
    $unet --lr 3e-4 --steps 11000 --caption-noise-on colour,position
    $unet --lr 2e-4 --steps 14000 --caption-noise-on colour,position
    $unet --lr 2e-4 --steps 18000 --caption-noise-on colour,position --caption-dropout 0.5
} >>"$RUNS/unet.log" 2>&1
wait
cp "$RUNS/vae/checkpoints/vae.pt" "$RUNS/unet/checkpoints/vae.pt"
python3 -m impasto.cli train-shapes --out "$RUNS/unet" --export-only
$train --seed 2 --out "$RUNS/final" --stage unet --init-from "$RUNS/unet/model" --unet-channels 32,32,64 \
    --batch-size 128 --lr 5e-4 --ema-decay 0.99 --caption-noise 0.25 --caption-dropout 0.5 --steps 800 \
    >>"$RUNS/final.log" 2>&1
echo "trained in $(( $(date +%s) - start )) s"
python3 benchmarks/shapes_eval.py --model "$RUNS/final/model" -n 200 --guidance default 3 1 \
    --json "$RUNS/final/eval.json"
