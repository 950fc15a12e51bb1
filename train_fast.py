#!/usr/bin/env python
"""Train a (Ne-Att) ViT: parse the config, build the Trainer, train, close.

    python train_fast.py --preset demo --data-dir data/digits --output runs          # CPU demo, minutes
    torchrun --nproc_per_node 8 train_fast.py --preset vitb16_300ep --data-dir /data/neatt/imagenet
    torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:29500 --nproc_per_node 8 \\
        train_fast.py --preset vitb16_300ep --data-dir /data/neatt/imagenet          # multi-node
    python train_fast.py --resume runs/demo                                          # continue exactly
    python train_fast.py --preset cifar100_transfer --data-dir data/cifar100 --initial-checkpoint model_best.pth.tar

Exit codes: 0 finished, or stopped cleanly after checkpointing (SIGTERM/SIGUSR1 preemption, --max-steps);
2 a user mistake (bad flag, missing data, unusable checkpoint, --resume with a changed config), printed without a
traceback; 3 the loss became NaN/inf (the message names the step; the last checkpoint on disk is a good one);
130 Ctrl-C (no checkpoint is ever left half-written).
"""
import sys

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 130


def main(argv=None) -> int:
    from neatt.train.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, resolve_checkpoint_path
    from neatt.train.config import config_from_args, config_from_dict, config_to_dict
    from neatt.train.loop import NonFiniteLossError, Trainer, UserInputError

    def saved_config(path):
        resume = resolve_checkpoint_path(path)
        return config_from_dict(checkpoint_config(load_checkpoint(resume, what='--resume'), resume))

    cfg, print_config = config_from_args(argv, base_for_resume=saved_config)
    if print_config:
        import json
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    trainer = None
    try:
        trainer = Trainer(cfg)
        trainer.train()
    except (UserInputError, CheckpointError) as e:
        print(f'train_fast.py: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    except NonFiniteLossError as e:
        print(f'train_fast.py: {e}', file=sys.stderr)
        return EXIT_NON_FINITE
    except KeyboardInterrupt:
        print('train_fast.py: interrupted; checkpoints on disk are complete (written atomically)', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if trainer is not None:
            trainer.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
