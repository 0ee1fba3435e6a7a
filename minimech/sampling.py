"""Text generation: feed the model its own predictions, one token at a time.

    model.generate("The cat sat on the", max_new_tokens=10, temperature=0)       # greedy: always the top token
    model.generate("Once upon a time", temperature=0.8, top_p=0.9, seed=1)       # sampled, reproducibly

Each step runs the whole sequence through the model again (no key-value cache: slower, but nothing to get wrong)
and picks the next token from the logits at the last position:

- greedy (temperature=0 or greedy=True): the argmax;
- otherwise sample from softmax(logits / temperature), keeping only the top_k most likely tokens and/or the smallest
  set of tokens whose probabilities add up to top_p ("nucleus" sampling). top_k=1 is greedy at any temperature.

Context window: the model cannot see more than n_ctx positions. When prompt + generated tokens grow past n_ctx, each
step runs on the *last n_ctx tokens only* (a sliding window); the oldest tokens, the BOS first, drop out of view. The
returned text and tokens still contain everything. A prompt longer than n_ctx is accepted the same way.

`seed` uses a private torch.Generator: the same seed gives the same text, and the global RNG is left alone. Without
a seed, sampling draws from the global RNG (torch.manual_seed controls it).
"""

from __future__ import annotations

import math

import torch

from .errors import MinimechError


class SamplingError(MinimechError, ValueError):
    """An argument of generate() that makes no sense (a negative temperature, top_p outside (0, 1], ...)."""


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, generator=None) -> torch.Tensor:
    """Next token ids [batch] from last-position logits [batch, d_vocab]."""
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]  # [batch, 1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely tokens before it already reach top_p; the top token always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)  # [batch, d_vocab]
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def _check_args(max_new_tokens, temperature, top_k, top_p, greedy) -> bool:
    """Validate the sampling arguments; return whether to decode greedily."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        raise SamplingError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise SamplingError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise SamplingError(f"top_p must lie in (0, 1] (or None for no limit), got {top_p!r}")
    if greedy is False and temperature == 0:
        raise SamplingError("temperature=0 means greedy decoding, but greedy=False was passed: "
                            "give a temperature > 0 to sample")
    return bool(greedy) or temperature == 0


def generate(model, prompt, max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool | None = None, seed: int | None = None,
             prepend_bos: bool = True, stop_at_eos: bool = True, return_tokens: bool = False,
             verbose: bool = False):
    """Continue `prompt` (a string, or token ids [batch, pos] / [pos]) by up to max_new_tokens tokens.

    Returns the text, prompt + continuation without the BOS (a list of strings when the batch has several rows),
    or, with return_tokens=True, the token ids [batch, prompt_pos + new] (BOS and any <|endoftext|> included).
    With stop_at_eos, a row stops at <|endoftext|>: it is kept in the tokens, cut from the text, and finished rows
    of a batch are padded with it until every row has stopped. prepend_bos applies to a string prompt only.
    """
    greedy = _check_args(max_new_tokens, temperature, top_k, top_p, greedy)
    tokenizer = model.tokenizer
    if tokenizer is None and (isinstance(prompt, str) or not return_tokens):
        raise MinimechError("this model has no tokenizer: pass the prompt as token ids and return_tokens=True")
    device = next(model.parameters()).device
    if isinstance(prompt, str):
        tokens = tokenizer.to_tokens(prompt, prepend_bos=prepend_bos)  # no max_len: the window slides
    elif isinstance(prompt, (list, tuple)) and any(isinstance(p, str) for p in prompt):
        raise SamplingError("generate takes one text prompt at a time (a padded batch of texts would continue "
                            "after the padding): loop over the prompts, or pass token ids of equal length")
    else:
        tokens = torch.as_tensor(prompt)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if tokens.is_floating_point() or tokens.is_complex() or tokens.ndim != 2 or tokens.shape[1] == 0:
            raise SamplingError(f"a token prompt must be integer ids [batch, pos] with pos >= 1, got "
                                f"{tokens.dtype} of shape {tuple(tokens.shape)}")
    tokens = tokens.to(device=device, dtype=torch.long)
    prompt_len = tokens.shape[1]
    eot_id = tokenizer.eot_id if tokenizer is not None else None
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)
    steps = range(max_new_tokens)
    if verbose:
        from .notebook import tqdm  # a widget in Jupyter, text elsewhere

        steps = tqdm(steps, desc="generate", unit="token")

    with torch.no_grad():
        for _ in steps:
            window = tokens[:, -model.cfg.n_ctx:]  # the sliding context window
            logits = model(window)[:, -1]  # [batch, d_vocab]
            next_tokens = sample_next(logits, temperature, top_k, top_p, greedy, generator)  # [batch]
            if stop_at_eos and eot_id is not None:
                next_tokens = next_tokens.masked_fill(finished, eot_id)  # finished rows: pad with eot
                finished |= next_tokens == eot_id
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            if stop_at_eos and finished.all():
                break
    if verbose:
        steps.close()  # also after an early stop at <|endoftext|>

    if return_tokens:
        return tokens
    texts = []
    for row in tokens.tolist():
        new = row[prompt_len:]
        if stop_at_eos and eot_id in new:
            new = new[:new.index(eot_id)]  # cut at the first generated eot (and the padding after it)
        start = 1 if row[0] == tokenizer.bos_id and (prepend_bos or not isinstance(prompt, str)) else 0
        texts.append(tokenizer.decode(row[start:prompt_len] + new))
    return texts[0] if len(texts) == 1 else texts
