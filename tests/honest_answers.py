"""Honest answers written independently of the solution notebooks, for calibrating the copy checks of
``qa_lib.course.integrity`` (tests/test_integrity.py): each is the body of an exercise's function (the code
between the markers). They are written to solve the exercise a different way, as different students would.
The tests read them, never run them; each was checked once against the library's reference implementation on
sample inputs (E5 and E8 with a pointer model like the notebooks').
"""

HONEST: dict[str, list[str]] = {
    "e1_collect_examples": [
        """
rows = [(p["context"], qa["question"], qa["answers"][0])
        for art in squad_json["data"] for p in art["paragraphs"] for qa in p["qas"]]
contexts = [r[0] for r in rows]
qs = [r[1] for r in rows]
starts = [r[2]["answer_start"] for r in rows]
ends = [r[2]["answer_start"] + len(r[2]["text"]) for r in rows]
return contexts, qs, starts, ends
""",
        """
out = ([], [], [], [])
for doc in squad_json.get("data", []):
    for para in doc.get("paragraphs", []):
        ctx = para["context"]
        for item in para.get("qas", []):
            first = item["answers"][0]
            begin = int(first["answer_start"])
            for column, value in zip(out, (ctx, item["question"], begin, begin + len(first["text"]))):
                column.append(value)
return out
""",
        """
def walk(data):
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            yield from ((paragraph["context"], qa) for qa in paragraph["qas"])

pairs = list(walk(squad_json))
texts = [qa["answers"][0]["text"] for _, qa in pairs]
start_chars = [qa["answers"][0]["answer_start"] for _, qa in pairs]
end_chars = [s + len(t) for s, t in zip(start_chars, texts)]
return [c for c, _ in pairs], [qa["question"] for _, qa in pairs], start_chars, end_chars
""",
    ],
    "e2_to_token_positions": [
        """
starts, ends = [], []
for row in range(len(start_chars)):
    first = encodings.char_to_token(row, start_chars[row], 1)
    last = encodings.char_to_token(row, end_chars[row] - 1, 1)
    ok = first is not None and last is not None
    starts.append(first if ok else 0)
    ends.append(last if ok else 0)
return torch.tensor(starts).long(), torch.tensor(ends).long()
""",
        """
def token_of(row, char):
    return encodings.char_to_token(row, char, sequence_index=1)

pairs = [(token_of(n, s), token_of(n, e - 1)) for n, (s, e) in enumerate(zip(start_chars, end_chars))]
pairs = [(0, 0) if None in pair else pair for pair in pairs]
result = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
return result[:, 0], result[:, 1]
""",
        """
labels = torch.zeros(2, len(start_chars), dtype=torch.long)
for index, span in enumerate(zip(start_chars, end_chars)):
    tokens = [encodings.char_to_token(index, char, sequence_index=1) for char in (span[0], span[1] - 1)]
    if all(token is not None for token in tokens):
        labels[:, index] = torch.tensor(tokens)
return labels[0], labels[1]
""",
    ],
    "e3_make_optimizer": [
        """
optimizer = torch.optim.AdamW(params=list(model.parameters()), lr=lr)
return optimizer
""",
        """
from torch.optim import AdamW

return AdamW(model.parameters(), lr)
""",
    ],
    "e5_predict": [
        """
enc = tokenizer(question, context, return_offsets_mapping=True, truncation="only_second", max_length=512,
                return_tensors="pt")
offset_mapping = enc.pop("offset_mapping")[0].tolist()
seq = enc.sequence_ids(0)
model.eval()
with torch.no_grad():
    out = model(**{k: v.to(model.device) for k, v in enc.items()})
s = int(torch.argmax(out.start_logits, dim=-1)[0])
e = int(torch.argmax(out.end_logits, dim=-1)[0])
if s > e or seq[s] != 1 or seq[e] != 1:
    return ""
return context[offset_mapping[s][0]:offset_mapping[e][1]]
""",
        """
encoded = tokenizer(question, context, truncation="only_second", max_length=512, return_offsets_mapping=True)
offsets = encoded["offset_mapping"]
in_context = [sid == 1 for sid in encoded.sequence_ids()]
batch = {name: torch.tensor([values]) for name, values in encoded.items() if name != "offset_mapping"}
param = next(model.parameters())
with torch.inference_mode():
    result = model(**{name: t.to(param.device) for name, t in batch.items()})
first = result.start_logits.squeeze(0).argmax().item()
last = result.end_logits.squeeze(0).argmax().item()
valid = first <= last and in_context[first] and in_context[last]
return context[offsets[first][0]:offsets[last][1]] if valid else ""
""",
    ],
    "e6_sliding_windows": [
        """
enc = tokenizer(list(questions), list(contexts), max_length=max_length, stride=stride, truncation="only_second",
                return_overflowing_tokens=True, return_offsets_mapping=True)
sample_map = enc["overflow_to_sample_mapping"]
starts, ends = [], []
for w in range(len(enc["input_ids"])):
    ex = sample_map[w]
    a_start = answer_starts[ex]
    a_end = a_start + len(answer_texts[ex])
    seq_ids = enc.sequence_ids(w)
    offs = enc["offset_mapping"][w]
    ctx_start = seq_ids.index(1)
    ctx_end = len(seq_ids) - 1 - seq_ids[::-1].index(1)
    if offs[ctx_start][0] > a_start or offs[ctx_end][1] < a_end:
        starts.append(0)
        ends.append(0)
        continue
    s = ctx_start
    while s <= ctx_end and offs[s][0] <= a_start:
        s += 1
    e = ctx_end
    while e >= ctx_start and offs[e][1] >= a_end:
        e -= 1
    starts.append(s - 1)
    ends.append(e + 1)
enc["start_positions"] = starts
enc["end_positions"] = ends
return enc
""",
        """
windows = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
labels = {"start_positions": [], "end_positions": []}
for index, offsets in enumerate(windows["offset_mapping"]):
    source = windows["overflow_to_sample_mapping"][index]
    first_char = answer_starts[source]
    last_char = first_char + len(answer_texts[source]) - 1
    token_for = {}
    for token, sequence in enumerate(windows.sequence_ids(index)):
        if sequence == 1:
            for char in range(*offsets[token]):
                token_for.setdefault(char, token)
    first, last = token_for.get(first_char), token_for.get(last_char)
    found = first is not None and last is not None
    labels["start_positions"].append(first if found else 0)
    labels["end_positions"].append(last if found else 0)
windows.update(labels)
return windows
""",
    ],
    "e7_best_span": [
        """
single = start_logits.dim() == 1
if single:
    start_logits, end_logits, context_mask = start_logits[None], end_logits[None], context_mask[None]
n = start_logits.size(-1)
i = torch.arange(n).view(-1, 1)
j = torch.arange(n).view(1, -1)
allowed = (j >= i) & (j - i < max_answer_length)
allowed = allowed[None] & context_mask.bool()[:, :, None] & context_mask.bool()[:, None, :]
total = start_logits.float().unsqueeze(2) + end_logits.float().unsqueeze(1)
total = torch.where(allowed, total, torch.full_like(total, -float("inf")))
score, index = total.reshape(total.size(0), -1).max(dim=1)
start, end = index // n, index % n
if single:
    return start[0], end[0], score[0]
return start, end, score
""",
        """
size = start_logits.shape[-1]
pair_scores = start_logits.float().unsqueeze(-1) + end_logits.float().unsqueeze(-2)
band = torch.ones(size, size, dtype=torch.bool).triu().tril(max_answer_length - 1)
keep = band & context_mask.bool().unsqueeze(-1) & context_mask.bool().unsqueeze(-2)
pair_scores[~keep] = float("-inf")
best_score, flat_index = pair_scores.flatten(start_dim=-2).max(dim=-1)
return torch.div(flat_index, size, rounding_mode="floor"), flat_index % size, best_score
""",
    ],
    "e8_predict_long": [
        """
enc = tokenizer(question, context, max_length=max_length, stride=stride, truncation="only_second",
                return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length", return_tensors="pt")
offsets = enc.pop("offset_mapping")
enc.pop("overflow_to_sample_mapping")
best_text, best_score = "", float("-inf")
for w in range(offsets.shape[0]):
    mask = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
    with torch.no_grad():
        out = model(**{k: v[w : w + 1] for k, v in enc.items()})
    s, e, score = best_span(out.start_logits[0], out.end_logits[0], mask, DEFAULT_MAX_ANSWER_LENGTH)
    if float(score) > best_score:
        best_score = float(score)
        best_text = context[int(offsets[w, s, 0]) : int(offsets[w, e, 1])]
return best_text
""",
        """
pieces = tokenizer([question], [context], truncation="only_second", max_length=max_length, stride=stride,
                   return_overflowing_tokens=True, return_offsets_mapping=True)
candidates = []
for window in range(len(pieces["input_ids"])):
    inputs = {key: torch.tensor([pieces[key][window]]) for key in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        logits = model(**inputs)
    in_context = torch.tensor([sid == 1 for sid in pieces.sequence_ids(window)])
    start, end, score = best_span(logits.start_logits[0], logits.end_logits[0], in_context)
    if torch.isfinite(score):
        char_start = pieces["offset_mapping"][window][int(start)][0]
        char_end = pieces["offset_mapping"][window][int(end)][1]
        candidates.append((float(score), context[char_start:char_end]))
return max(candidates)[1] if candidates else ""
""",
    ],
    "e9_whole_word_mask": [
        """
groups = {}
for position, word in enumerate(word_ids):
    if word is not None:
        groups.setdefault(word, []).append(position)
budget = int(round(mask_ratio * sum(len(p) for p in groups.values())))
mask = torch.zeros(len(word_ids), dtype=torch.bool)
keys = list(groups)
taken = 0
for k in torch.randperm(len(keys), generator=generator).tolist():
    if taken >= budget:
        break
    mask[groups[keys[k]]] = True
    taken += len(groups[keys[k]])
return mask
""",
        """
unique_words = sorted({w for w in word_ids if w is not None})
sizes = torch.tensor([word_ids.count(w) for w in unique_words], dtype=torch.float)
goal = mask_ratio * sizes.sum()
shuffled = torch.randperm(len(unique_words), generator=generator)
needed = int((torch.cumsum(sizes[shuffled], dim=0) < goal).sum()) + int(goal > 0)
picked = {unique_words[i] for i in shuffled[:needed].tolist()}
return torch.tensor([w in picked for w in word_ids])
""",
    ],
}
# E4 has two answer regions (argmax_positions, span_accuracy): each alternative is a pair of bodies.
HONEST_E4: list[tuple[str, str]] = [
    (
        "return torch.argmax(start_logits, dim=-1), torch.argmax(end_logits, dim=-1)",
        "return float((pred == gold).sum()) / pred.numel()",
    ),
    (
        "starts = start_logits.max(dim=-1).indices\nends = end_logits.max(dim=-1).indices\nreturn starts, ends",
        "correct = pred.eq(gold).float()\nreturn correct.mean().item()",
    ),
]
