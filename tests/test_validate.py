"""tools/validate.py against an independent evaluation: the val shard read with tarfile and PIL, torchvision's
resize + center crop, the weights loaded with plain `load_state_dict`, top-k and cross-entropy computed here.
Also: the figures the trainer logged for the same checkpoint, a timm (vanilla ViT) checkpoint, bad input; and
tools/export_model.py, whose folder timm reads alone, checked against the same evaluation."""
import io
import json
import math
import sys
import tarfile

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

import neatt  # noqa: F401  (registers the neatt_vit_* models)
from neatt.models import to_vanilla_state_dict
from neatt.train.config import PRESETS, apply_overrides
from neatt.train.loop import Trainer

from _train_data import REPO, convert_digits

sys.path.insert(0, str(REPO / 'tools'))
import export_model  # noqa: E402
import validate  # noqa: E402

KWARGS = {'depth': 2, 'embed_dim': 48, 'num_heads': 3}
SIZE = 16


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    return convert_digits(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def run_dir(digits_dir, tmp_path_factory):
    """A short demo-preset run of a tiny Ne-Att (ffcv loader): accuracy well above chance, EMA kept."""
    root = tmp_path_factory.mktemp('runs')
    cfg = apply_overrides(PRESETS['demo'](), dict(
        model_kwargs=KWARGS, img_size=SIZE, data_dir=str(digits_dir), output=str(root), experiment='r',
        batch_size=64, lr=3e-3, warmup_epochs=0, workers=1, epochs=4, log_interval=5, model_ema_decay=0.9))
    trainer = Trainer(cfg, log=lambda m: None)
    try:
        trainer.train()
    finally:
        trainer.close()
    return root / 'r'


def _images(digits_dir, split):
    """(PIL image, label) of every sample of a split, read from its DALI shard with tarfile (webdataset layout)."""
    with tarfile.open(digits_dir / 'dali' / f'{split}-00000.tar') as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted(name[:-4] for name in members if name.endswith('.jpg'))
    return [(Image.open(io.BytesIO(members[k + '.jpg'])).convert('RGB'), int(members[k + '.cls'])) for k in keys]


@torch.no_grad()
def _reference(model, digits_dir, crop_pct, split='val', flip_tta=False):
    """top1 %, top5 %, mean CE and count, as timm's validate.py computes them, with torchvision's eval transform;
    `flip_tta`: of the mean logits of each crop and of the crop mirrored by torchvision's hflip."""
    cfg = model.pretrained_cfg
    tf = transforms.Compose([
        transforms.Resize(math.floor(SIZE / crop_pct), interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(SIZE), transforms.ToTensor(), transforms.Normalize(cfg['mean'], cfg['std'])])
    samples = _images(digits_dir, split)
    x = torch.stack([tf(img) for img, _ in samples])
    y = torch.tensor([label for _, label in samples])
    logits = model.eval()(x)
    if flip_tta:
        crop = transforms.Compose(tf.transforms[:2])
        mirrored = torch.stack([tf.transforms[3](tf.transforms[2](transforms.functional.hflip(crop(img))))
                                for img, _ in samples])
        logits = (logits + model(mirrored)) / 2
    top5 = logits.topk(5, dim=1).indices
    return {'top1': 100.0 * (top5[:, 0] == y).sum().item() / len(y),
            'top5': 100.0 * (top5 == y[:, None]).any(1).sum().item() / len(y),
            'loss': F.cross_entropy(logits, y).item(), 'count': len(y)}


def _best(run_dir):
    return torch.load(run_dir / 'model_best.pth.tar', map_location='cpu', weights_only=False)


def _tiny_neatt(state_dict):
    """The run's model, built by timm and loaded with plain load_state_dict."""
    model = timm.create_model('neatt_vit_tiny_patch4_32', num_classes=10, img_size=SIZE, **KWARGS, global_pool='avg')
    model.load_state_dict(state_dict)
    return model


def _assert_same(got, want):
    assert got['count'] == want['count']
    assert got['top1'] == pytest.approx(want['top1'], abs=1e-9) and got['top5'] == pytest.approx(want['top5'],
                                                                                                  abs=1e-9)
    assert got['loss'] == pytest.approx(want['loss'], rel=1e-4)


def test_a_train_fast_checkpoint_against_an_independent_evaluation(digits_dir, run_dir, tmp_path):
    out = tmp_path / 'val.json'
    assert validate.main(['--data-dir', str(digits_dir), '--checkpoint', str(run_dir), '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['backend'] == 'ffcv' and report['img_size'] == SIZE and report['crop_pct'] == 0.875
    ckpt = _best(run_dir)
    for which, key in (('model', 'state_dict'), ('ema', 'state_dict_ema')):
        want = _reference(_tiny_neatt(ckpt[key]), digits_dir, crop_pct=0.875)
        _assert_same(report['results'][which], want)
    assert report['results']['model']['top1'] > 30  # trained: the comparison is not between two chance levels

    # the trainer's own evaluation of this checkpoint's epoch gave the same figures
    evals = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    logged = next(e for e in evals if e['kind'] == 'eval' and e['epoch'] == ckpt['epoch'])
    assert logged['top1'] == pytest.approx(report['results']['model']['top1'])
    assert logged['ema_top1'] == pytest.approx(report['results']['ema']['top1'])


def test_the_train_split_is_evaluated_with_the_eval_transform(digits_dir, run_dir, tmp_path):
    """--split train: every train image once (no shuffle, no padding, no drop), resized and center-cropped."""
    out = tmp_path / 'val.json'
    args = ['--data-dir', str(digits_dir), '--checkpoint', str(run_dir), '--split', 'train', '--weights', 'model',
            '--backend', 'torch', '-b', '100', '--json', str(out)]
    assert validate.main(args) == 0
    got = json.loads(out.read_text())['results']['model']
    _assert_same(got, _reference(_tiny_neatt(_best(run_dir)['state_dict']), digits_dir, crop_pct=0.875,
                                 split='train'))
    assert got['count'] == 1437


def test_flip_tta_scores_the_mean_logits_of_each_image_and_its_mirror(digits_dir, run_dir, tmp_path):
    out = tmp_path / 'val.json'
    args = ['--data-dir', str(digits_dir), '--checkpoint', str(run_dir), '--weights', 'model', '--flip-tta',
            '--json', str(out)]
    assert validate.main(args) == 0
    report = json.loads(out.read_text())
    state_dict = _best(run_dir)['state_dict']
    assert report['flip_tta'] is True
    _assert_same(report['results']['model'], _reference(_tiny_neatt(state_dict), digits_dir, 0.875, flip_tta=True))
    plain = _reference(_tiny_neatt(state_dict), digits_dir, 0.875)
    assert report['results']['model']['loss'] != pytest.approx(plain['loss'], rel=1e-4)  # the mirror counted


def test_a_timm_vanilla_checkpoint_takes_timm_crop_pct(digits_dir, run_dir, tmp_path):
    """A checkpoint as timm's train.py writes it (arch, state_dict, no config), of a vanilla ViT: the model comes
    from `arch`, the crop_pct from timm's pretrained config for it (0.9 for vit_tiny_patch16_224)."""
    ckpt = _best(run_dir)
    path = tmp_path / 'timm.pth.tar'
    torch.save({'arch': 'vit_tiny_patch16_224', 'epoch': 3, 'state_dict': to_vanilla_state_dict(ckpt['state_dict'])},
               path)
    out = tmp_path / 'val.json'
    args = ['--data-dir', str(digits_dir), '--checkpoint', str(path), '--backend', 'torch', '--img-size', str(SIZE),
            '--model-kwargs', 'patch_size=4', *[f'{k}={v}' for k, v in KWARGS.items()], 'global_pool=avg',
            '--json', str(out)]
    assert validate.main(args) == 0
    report = json.loads(out.read_text())
    assert report['model'] == 'vit_tiny_patch16_224' and report['crop_pct'] == 0.9
    assert list(report['results']) == ['model']
    model = timm.create_model('vit_tiny_patch16_224', num_classes=10, img_size=SIZE, patch_size=4, **KWARGS,
                              global_pool='avg')
    model.load_state_dict(to_vanilla_state_dict(ckpt['state_dict']))
    _assert_same(report['results']['model'], _reference(model, digits_dir, crop_pct=0.9))


@pytest.mark.parametrize('extra,message', [
    (['--checkpoint', '{tmp}/none.pth.tar'], 'no checkpoint at'),
    (['--model', 'vit_tiny_patch16_224'], 'holds a Ne-Att model'),
    (['--weights', 'ema', '--checkpoint', '{tmp}/raw.pth'], 'has no EMA weights'),
    (['--checkpoint', '{tmp}/cifar.pth'], 'has 100 classes, the dataset has 10'),
    (['--model-kwargs', 'depth=3'], 'do not fit --model neatt_vit_tiny_patch4_32'),
    (['--crop-pct', '1.5'], '--crop-pct must be in (0, 1]'),
])
def test_bad_input_is_a_message_and_exit_2(digits_dir, run_dir, tmp_path, capsys, extra, message):
    weights = _best(run_dir)['state_dict']
    torch.save(weights, tmp_path / 'raw.pth')
    cifar = dict(weights, **{'head.weight': torch.zeros(100, 48), 'head.bias': torch.zeros(100)})
    torch.save({'arch': 'neatt_vit_tiny_patch4_32', 'state_dict': cifar}, tmp_path / 'cifar.pth')
    args = ['--data-dir', str(digits_dir), '--checkpoint', str(run_dir), '--backend', 'torch']
    args += [a.format(tmp=tmp_path) for a in extra]
    assert validate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('validate.py: error: ') and message in err and 'Traceback' not in err


def test_a_dataset_without_a_manifest(tmp_path, capsys):
    assert validate.main(['--data-dir', str(tmp_path), '--checkpoint', str(tmp_path)]) == 2
    assert 'manifest.json not found' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- tools/export_model.py
def test_an_exported_folder_is_read_by_timm_alone(digits_dir, run_dir, tmp_path):
    """timm.create_model('local-dir:...', pretrained=True) rebuilds the model with the weights that scored best,
    bit for bit; timm's own eval transform from the folder's config (image size, crop_pct, mean/std, bicubic)
    scores them as the independent evaluation does; the class names are the manifest's."""
    out = tmp_path / 'exported'
    assert export_model.main(['--checkpoint', str(run_dir), '--output', str(out)]) == 0
    ckpt = _best(run_dir)
    which = ckpt['train_state']['best']['which']
    want = ckpt['state_dict_ema' if which == 'ema' else 'state_dict']
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert json.loads((out / 'config.json').read_text())['label_names'] == [str(c) for c in range(10)]
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg['input_size'] == (3, SIZE, SIZE) and data_cfg['crop_pct'] == 0.875
    transform = timm.data.create_transform(**data_cfg)
    samples = _images(digits_dir, 'val')
    with torch.no_grad():
        pred = model(torch.stack([transform(img) for img, _ in samples])).argmax(1)
    top1 = 100.0 * (pred == torch.tensor([label for _, label in samples])).sum().item() / len(samples)
    assert top1 == pytest.approx(_reference(_tiny_neatt(want), digits_dir, crop_pct=0.875)['top1'], abs=1e-9)
    assert export_model.main(['--checkpoint', str(run_dir), '--output', str(tmp_path / 'model'),
                              '--weights', 'model']) == 0
    got = timm.create_model(f'local-dir:{tmp_path / "model"}', pretrained=True).state_dict()
    assert all(torch.equal(got[k], ckpt['state_dict'][k]) for k in got)


def test_validate_pretrained_reads_an_exported_folder(digits_dir, run_dir, tmp_path, capsys):
    """validate.py --model local-dir:PATH --pretrained: the folder's weights at its image size and crop_pct, scored
    as the independent evaluation scores the checkpoint's weights."""
    out = tmp_path / 'exported'
    assert export_model.main(['--checkpoint', str(run_dir), '--output', str(out), '--weights', 'ema']) == 0
    report = tmp_path / 'val.json'
    args = ['--data-dir', str(digits_dir), '--model', f'local-dir:{out}', '--pretrained', '--json', str(report)]
    assert validate.main(args) == 0
    got = json.loads(report.read_text())
    assert (got['img_size'], got['crop_pct'], got['model']) == (SIZE, 0.875, 'neatt_vit_tiny_patch4_32')
    _assert_same(got['results']['model'], _reference(_tiny_neatt(_best(run_dir)['state_dict_ema']), digits_dir,
                                                     crop_pct=0.875))
    for argv, message in ((['--pretrained'], '--pretrained needs --model'),
                          (['--pretrained', '--model', f'local-dir:{tmp_path / "nowhere"}'], 'Config file not found'),
                          (['--pretrained', '--model', f'local-dir:{out}', '--weights', 'ema'],
                           '--pretrained has one')):
        assert validate.main(['--data-dir', str(digits_dir), *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one source of weights
        validate.main(['--data-dir', str(digits_dir), '--checkpoint', str(run_dir), '--pretrained'])
    assert 'not allowed with argument' in capsys.readouterr().err


def test_vanilla_vit_weights_start_ne_att_through_timms_pretrained_path(digits_dir, run_dir, tmp_path):
    """A vanilla ViT's .safetensors as the pretrained file of a Ne-Att model (timm's pretrained_cfg_overlay, as
    for a hub id): every weight loaded, the head-mixing MLPs left at their init. Exporting a timm checkpoint
    whose `arch` does not fit its weights is a message, not a folder."""
    from safetensors.torch import save_file
    vanilla = to_vanilla_state_dict(_best(run_dir)['state_dict'])
    save_file(vanilla, tmp_path / 'vanilla.safetensors')
    overlay = {'file': str(tmp_path / 'vanilla.safetensors'), 'num_classes': 10}
    ne_att = timm.create_model('neatt_vit_tiny_patch4_32', pretrained=True, pretrained_cfg_overlay=overlay,
                               num_classes=10, img_size=SIZE, **KWARGS, global_pool='avg')
    got = ne_att.state_dict()
    assert all(torch.equal(got[k], v) for k, v in vanilla.items())
    assert {k for k in got if k not in vanilla} == {k for k in got if 'head_mix' in k} != set()
    torch.save({'arch': 'vit_tiny_patch16_224', 'state_dict': vanilla}, tmp_path / 'timm.pth.tar')
    args = ['--checkpoint', str(tmp_path / 'timm.pth.tar'), '--output', str(tmp_path / 'out')]
    assert export_model.main(args) == 2 and not (tmp_path / 'out').exists()


def test_a_timm_train_checkpoint_exports_at_its_architectures_size(tmp_path):
    """A timm train.py checkpoint (arch, state_dict; no config): exported at the architecture's image size and
    crop_pct, its weights bit for bit; an unknown arch is a message."""
    model = timm.create_model('vit_tiny_patch16_224', num_classes=5)
    torch.save({'arch': 'vit_tiny_patch16_224', 'epoch': 7, 'state_dict': model.state_dict()}, tmp_path / 'a.pth.tar')
    assert export_model.main(['--checkpoint', str(tmp_path / 'a.pth.tar'), '--output', str(tmp_path / 'out')]) == 0
    back = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['input_size'], cfg['crop_pct'], cfg['num_classes']) == ([3, 224, 224], 0.9, 5)
    torch.save({'arch': 'vit_nothing_like_it', 'state_dict': model.state_dict()}, tmp_path / 'b.pth.tar')
    assert export_model.main(['--checkpoint', str(tmp_path / 'b.pth.tar'), '--output', str(tmp_path / 'b')]) == 2


def test_export_mistakes_are_exit_2(run_dir, tmp_path, capsys):
    (tmp_path / 'taken').mkdir()
    for args, message in ((['--checkpoint', str(tmp_path / 'none.pth.tar')], 'no checkpoint at'),
                          (['--checkpoint', str(run_dir), '--output', str(tmp_path / 'taken')], 'exists; remove it')):
        argv = ['--output', str(tmp_path / 'out')] + args
        assert export_model.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith('export_model.py: error: ') and message in err
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out.*'))
