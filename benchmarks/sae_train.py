"""SAE training throughput on cached activations: minimech.sae.train_sae against SAELens's SAETrainer, one run.

    pip install -e ".[peers]"          # sae-lens 6.54.12, with torch==2.13.0 installed first (../shared/PEERS.md)
    python benchmarks/sae_train.py [--tokens 131072 --steps 150 --threads 1 --repeats 1]

Data: the default model's middle-MLP activations (blocks.{n_layers // 2}.mlp.hook_post) on corpus text, cached
once; both trainers read the same batches in the same order from that tensor (an iterator over it), so the figure is
training only, not activation collection. Settings, both sides: d_sae = 4 x d_in, batch 4096, Adam lr 1e-3 (betas
0.9, 0.999), constant lr, gradient clipping at norm 1, no input normalisation, decoder rows starting at unit norm;
ReLU with the L1 coefficient 3 from the first step (SAELens: l1_warm_up_steps 0), no resampling; TopK k = 16 with
AuxK (coefficient 1/32, dead window 50 steps). What differs by design: minimech keeps the decoder rows at unit norm
(the gradient's radial part removed, then renormalised: ~3 extra elementwise passes over W_dec per step); SAELens
leaves them free and weights the L1 by their norms.

Printed per kind (relu, topk): median seconds per run of each trainer over interleaved repeats, tokens per second,
the ratio (SAELens time / minimech time: above 1 means minimech is faster), and each side's final MSE and L0 on
held-out cached activations, so a speed-up that broke the training would show.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


class Batches:
    """An endless iterator over acts [n, d_in] in fixed shuffled batches (the same order for every trainer)."""

    def __init__(self, acts: torch.Tensor, batch: int, seed: int = 0):
        self.acts, self.batch = acts, batch
        self.order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.i + self.batch > len(self.order):
            self.i = 0
        rows = self.order[self.i:self.i + self.batch]
        self.i += self.batch
        return self.acts[rows]


def run_minimech(model, hook, acts, kind: str, steps: int, batch: int) -> tuple[float, object]:
    from minimech.sae import train_sae

    extra = {"activation": "topk", "k": 16, "aux_k_coefficient": 1 / 32} if kind == "topk" else {}
    start = time.perf_counter()
    sae = train_sae(model, hook, stream=Batches(acts, batch), progress=False, training_tokens=steps * batch,
                    batch_size=batch, lr=1e-3, l1_coefficient=3.0, l1_warmup_fraction=0.0, lr_decay_fraction=0.0,
                    resample_every=0, dead_window=50, normalize=False, **extra)
    return time.perf_counter() - start, sae


def run_saelens(acts, kind: str, steps: int, batch: int) -> tuple[float, object]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = acts.shape[1]
    if kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=4 * d_in, k=16, aux_loss_coefficient=1 / 32,
                                                    decoder_init_norm=1.0))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=4 * d_in, l1_coefficient=3.0,
                                                            decoder_init_norm=1.0))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=1e-3, lr_end=1e-3,
                           dead_feature_window=50, feature_sampling_window=10 * steps,
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, Batches(acts, batch))
    start = time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        trainer.fit()
    return time.perf_counter() - start, sae


@torch.no_grad()
def quality(sae, held_out: torch.Tensor) -> tuple[float, float]:
    f = sae.encode(held_out)
    return (sae.decode(f) - held_out).pow(2).sum(-1).mean().item(), (f != 0).float().sum(-1).mean().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=131072, help="cached activations to train on")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per trainer (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on a shared machine one is steadier)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import sae_lens

    import minimech
    from minimech.sae import collect_activations, corpus_rows
    from minimech.sae.shipped import default_hook

    model = minimech.load()
    hook = default_hook(model)
    rows = corpus_rows(model, args.tokens // 25, seed=777)
    acts = collect_activations(model, hook, rows)
    acts, held_out = acts[:args.tokens].contiguous(), acts[args.tokens:args.tokens + 8192]
    print(f"{model.card.get('name', 'model')} {hook}: {len(acts):,} cached activations of width {acts.shape[1]}, "
          f"d_sae {4 * acts.shape[1]}, {args.steps} steps of {args.batch}; torch {torch.__version__}, "
          f"{args.threads} threads; sae_lens {sae_lens.__version__}")
    for kind in ("relu", "topk"):
        ours, theirs = [], []
        for _ in range(args.repeats):
            t, our_sae = run_minimech(model, hook, acts, kind, args.steps, args.batch)
            ours.append(t)
            t, their_sae = run_saelens(acts, kind, args.steps, args.batch)
            theirs.append(t)
        a, b = statistics.median(ours), statistics.median(theirs)
        tokens = args.steps * args.batch
        (mse_a, l0_a), (mse_b, l0_b) = quality(our_sae, held_out), quality(their_sae, held_out)
        print(f"{kind:5} minimech {a:6.1f} s ({tokens / a:8,.0f} tokens/s, held-out MSE {mse_a:.2f}, L0 {l0_a:.1f})  "
              f"SAELens {b:6.1f} s ({tokens / b:8,.0f} tokens/s, MSE {mse_b:.2f}, L0 {l0_b:.1f})  "
              f"ratio {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
