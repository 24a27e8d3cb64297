"""The figures eval.py reports: exact per-story loss and bits per byte, and the figures of a model's own
stories.

Every story is scored on its own, preceded by <|endoftext|> as in training, and every token counts once, the
<|endoftext|> that closes the story included. A story longer than the context is read in windows of the
context's length: the first scores all its tokens, each next one advances by half a context and scores only
its new tokens, so every token is scored once with at least half a context before it. The figures do not
depend on the batch size.

Story figures: words are lowercased runs of letters and digits (see WORD); distinct-n, repeated 4-grams,
articles, and the longest run of words copied from the training stories (memorisation).
"""

import itertools
import re

import numpy as np
import torch
import torch.nn.functional as F

# openings written for this file, in the style of TinyStories; the empty one starts a fresh story
OPENINGS = (
    "",
    "Once upon a time, there was a little girl named Lily.",
    "One day, a small dog named Max found a big red ball in the park.",
    "Tom and his mom went to the store to buy apples.",
    "There was a tiny bird who could not fly.",
    "Sara had a new toy car. She loved to play with it every day.",
    "It was a rainy day, and Ben was sad because he could not go outside.",
    "In a small town, there lived a kind old man who liked to help everyone.",
    "The sun was shining and the flowers in the garden were happy.",
    "Mia wanted to bake a cake for her friend's birthday.",
    "A big bear lived in the forest. He was very hungry.",
)
WORD = re.compile(
    r"\w+(?:'\w+)*"
)  # a word: letters and digits, with inner apostrophes (don't); no punctuation
ARTICLES = {"a", "an", "the"}


def token_nll(logits, targets):
    """(B, T) -log p of each target under (B, T, V) logits, in float32; 0 where the target is -1."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1, reduction="none"
    ).view(targets.shape)


# ----------------------------------------------------------------------------- language-model figures


def windows(n, window):
    """(begin, end, first) for a story of n inputs: the model reads inputs begin:end and the predictions at
    positions first:end are scored. The first window scores all it reads; each next one advances by half a
    window, scores only its new positions and reads as far back as the window allows."""
    spans, end = [], 0
    while end < n:
        new_end = min(end + (window if end == 0 else max(1, window // 2)), n)
        spans.append((max(0, new_end - window), new_end, end))
        end = new_end
    return spans


@torch.no_grad()
def score(lm, stories, batch_size, torch_device):
    """Per story (a sequence of token ids), the summed -log p of its tokens and of the <|endoftext|> after it,
    read after an <|endoftext|>; float64.

    Windows are sorted by length, longest first, and batched with padding (target -1): the order depends only
    on the stories, so each story's sum is added up in the same order whatever the batch size.
    """
    seqs = [np.concatenate(([lm.eot], ids, [lm.eot])).astype(np.int64) for ids in stories]
    spans = sorted(
        ((i, *span) for i, seq in enumerate(seqs) for span in windows(len(seq) - 1, lm.window)),
        key=lambda span: span[1] - span[2],
    )  # begin - end: the longest first
    totals = torch.zeros(len(stories), dtype=torch.float64)
    for b in range(0, len(spans), batch_size):
        batch = spans[b : b + batch_size]
        width = max(end - begin for _, begin, end, _ in batch)
        idx = np.full((len(batch), width), lm.eot)
        targets = np.full((len(batch), width), -1)
        for row, (i, begin, end, first) in enumerate(batch):
            idx[row, : end - begin] = seqs[i][begin:end]
            targets[row, first - begin : end - begin] = seqs[i][first + 1 : end + 1]
        nll = lm.nll(torch.from_numpy(idx).to(torch_device), torch.from_numpy(targets).to(torch_device))
        totals.index_add_(0, torch.tensor([s[0] for s in batch]), nll.double().sum(1).cpu())
    return totals


# ----------------------------------------------------------------------------- story figures


def words(text):
    return WORD.findall(text.lower())


def ngrams(ws, n):
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def share(part, whole):
    return part / whole if whole else None


def longest_copy(stories, training):
    """(n, text): the longest run of n words of `stories` that also occurs in one of `training` (texts).

    The training stories stream by once, and only the stories' (n + 1)-grams are held: a training story raises
    n while it shares an (n + 1)-gram with them. That stops at its longest shared run, since a shared run of m
    words contains shared runs of every length below m, so after the last story n is the longest of all.
    """
    split = [words(s) for s in stories]
    n, example, grams = 0, "", {g for ws in split for g in ngrams(ws, 1)}
    for story in training:
        ws = words(story)
        while shared := grams.intersection(ngrams(ws, n + 1)):
            n, example = n + 1, " ".join(min(shared))
            grams = {g for w in split for g in ngrams(w, n + 1)}
    return n, example


def story_figures(stories, ended=None):
    """Figures over texts; words are lowercased runs of letters and digits (see WORD).

    ended: whether each story reached <|endoftext|> (samples). distinct-n: distinct word n-grams / all
    n-grams, over all stories together (n-grams do not cross stories). repeated_4grams: the share of 4-grams
    that already occurred earlier in the same story, pooled over all stories. article_presence: the share of
    stories with a, an or the (seed 003's figure).
    """
    split = [words(s) for s in stories]
    n_words = sum(map(len, split))
    figures = {
        "stories": len(stories),
        "reach_end": share(sum(ended), len(ended)) if ended is not None else None,
        "mean_words": share(n_words, len(stories)),
    }
    for n in (1, 2, 3):
        grams = [g for ws in split for g in ngrams(ws, n)]
        figures[f"distinct_{n}"] = share(len(set(grams)), len(grams))
    fours = [ngrams(ws, 4) for ws in split]
    figures["repeated_4grams"] = share(sum(len(g) - len(set(g)) for g in fours), sum(map(len, fours)))
    figures["article_presence"] = share(sum(any(w in ARTICLES for w in ws) for ws in split), len(stories))
    articles = sum(w in ARTICLES for ws in split for w in ws)
    figures["articles_per_100_words"] = share(100 * articles, n_words)
    return figures


def memorisation(stories, training):
    """The longest copied run for the figures; training: a function giving the training texts, or None."""
    n, text = longest_copy(stories, training()) if training else (None, None)
    return {"longest_copy": n, "longest_copy_text": text}


def sample_stories(lm, n, seed, batch_size, settings, torch_device):
    """(texts, continuations, ended): story i continues OPENINGS[i * len(OPENINGS) // n] and is seeded seed +
    i; the stories of one opening are decoded together, batch_size at a time. A text is the opening and its
    continuation, the model's own words."""
    texts, continuations, ended = [], [], []
    for opening, group in itertools.groupby(range(n), key=lambda i: i * len(OPENINGS) // n):
        group = list(group)
        prompt = lm.prompt(OPENINGS[opening])
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            idx = torch.tensor([prompt] * len(rows), device=torch_device)
            for ids in lm.sample(idx, seed + rows[0], settings).tolist():
                end = ids.index(lm.eot) if lm.eot in ids else len(ids)
                continuations.append(lm.decode(ids[:end]))
                texts.append(OPENINGS[opening] + continuations[-1])
                ended.append(end < len(ids))
    return texts, continuations, ended
