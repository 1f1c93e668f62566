#!/usr/bin/env bash
# Regenerates the example inputs from the clean images with edn's own simulate commands.
# camera.png: scikit-image's "camera" (CC0, photographer Lav Varshney), downscaled to 256x256.
# phantom.png: the Shepp-Logan phantom (scikit-image), 256x256.
set -euo pipefail
cd "$(dirname "$0")"
edn simulate sr --scale 4 --noise-sigma 0.01 --seed 0 camera.png -o camera_lr_x4.tif --force
edn simulate deblur --kernel-sigma 1.6 --kernel-size 25 --noise-sigma 0.01 --seed 0 camera.png -o camera_blur.tif --force
edn simulate ct --angles 180 --noise-sigma 0.01 --seed 0 phantom.png -o phantom_sino.h5 --force
