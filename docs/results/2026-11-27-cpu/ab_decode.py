"""Decoding one train crop: FFCV's imdecode of the whole JPEG (what the FFCV loader called before 2026-11-27)
against pipelines/_jpeg_window.c's window decode, on the same photos and windows, rounds interleaved; and how
often each equals Pillow's decode.

    .venv/bin/python docs/results/2026-11-27-cpu/ab_decode.py [photo dir]

Photos: the --make-photos sources of tools/bench_loader.py (default /tmp/bench/photos/src/train), re-encoded with
OpenCV at quality 90 as the converter stores them; windows from pipelines.crop.rrc_windows (timm's defaults).
"""
import glob, io, sys, time
sys.path.insert(0, '.')  # run from the repo root
import cv2
import numpy as np
from PIL import Image
from ffcv.libffcv import imdecode
from pipelines.crop import rrc_windows
from pipelines.ffcv_loader import decode_window

src = sys.argv[1] if len(sys.argv) > 1 else '/tmp/bench/photos/src/train'
files = sorted(glob.glob(f'{src}/**/*.jpg', recursive=True))[:400]
jpegs, sizes = [], []
for f in files:
    im = np.asarray(Image.open(f).convert('RGB'))
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 90])
    jpegs.append(buf.reshape(-1)); sizes.append(im.shape[:2])
H, W = np.array(sizes).T
win = rrc_windows(H, W, np.arange(len(jpegs)), seed=0, epoch=0)
print(f'{len(jpegs)} photos, mean {H.mean():.0f} x {W.mean():.0f}; windows cover {np.mean(win[:, 2] * win[:, 3] / (H * W)):.0%} '
      'of the image on average')
out = np.empty(max(H) * max(W) * 3, np.uint8)


def ffcv_whole():
    for a, h, w in zip(jpegs, H, W):
        imdecode(a, out, h, w, h, w, 0, 0, 1, 1, False, False)


def window():
    for a, w_img, (y, x, h, w) in zip(jpegs, W, win):
        decode_window(a.ctypes.data, a.size, y, x, h, w, out.ctypes.data, 3 * w_img)


same = {'ffcv': 0, 'window': 0}
for a, h_img, w_img, (y, x, h, w) in zip(jpegs, H, W, win):
    ref = np.asarray(Image.open(io.BytesIO(a.tobytes())).convert('RGB'))
    imdecode(a, out, h_img, w_img, h_img, w_img, 0, 0, 1, 1, False, False)
    same['ffcv'] += np.array_equal(out[:h_img * w_img * 3].reshape(h_img, w_img, 3), ref)
    left = decode_window(a.ctypes.data, a.size, y, x, h, w, out.ctypes.data, 3 * w_img)
    same['window'] += np.array_equal(out[:h * w_img * 3].reshape(h, w_img, 3)[:, left:left + w], ref[y:y + h, x:x + w])
print('equal to Pillow:', {k: f'{v}/{len(jpegs)}' for k, v in same.items()})
times = {'ffcv imdecode, whole image': [], 'window decode': []}
for r in range(9):
    for name, fn in (zip(times, (ffcv_whole, window)) if r % 2 else reversed(list(zip(times, (ffcv_whole, window))))):
        t = time.perf_counter(); fn(); times[name].append((time.perf_counter() - t) / len(jpegs) * 1e3)
for name, v in times.items():
    print(f'{name:28s} min {min(v):.3f}  median {np.median(v):.3f} ms per image')
r = sorted(b / a for a, b in zip(*times.values()))
print(f'window / whole: {min(times["window decode"]) / min(times["ffcv imdecode, whole image"]):.3f} (min), '
      f'median of paired rounds {r[len(r) // 2]:.3f}')
