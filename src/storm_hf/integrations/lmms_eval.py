# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""STORM as an lmms-eval model (lmms-eval 0.7.3; `pip install -e ".[lmms-eval]"` in its own environment, see
the README). Registered by the entry point in `storm_hf.integrations.lmms_eval_entry`:

    python -m lmms_eval --model storm --model_args pretrained=PATH_OR_HUB_ID,num_frames=16 --tasks TASK ...

Model arguments: ``pretrained`` (a checkpoint folder or Hub id; the bundled model when left out), ``device``,
``num_frames`` or ``fps`` (+ ``max_frames``), ``temporal_pool_k``, ``spatial_pool_p``, ``temporal_sample_s``
(set on the model and the processor together), ``max_new_tokens``.

Each request's text context goes into STORM's chat template as the user turn after the video (the first of
the doc's visuals), as `storm-hf eval` builds its prompts, so the two score a set the same way:
* `generate_until`: greedy when ``temperature`` is 0 or absent (else sampling at that temperature), cut at the
  first of the ``until`` strings;
* `loglikelihood` (lmms-eval's multiple choice): the continuation's tokens after the prompt, returned as
  (negative summed log-probability, whether every token was the greedy one). lmms-eval 0.7.3 picks the
  choice with the *lowest* value (``np.argmin``), as its built-in models return a loss; the pair is wrapped in
  its `GenerationResult`, since its evaluator would otherwise turn a tuple into a string.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms

from ..inference import expanded_prompt_ids, load, set_token_reduction, video_outputs


class Storm(lmms):
    is_simple = True

    def __init__(self, pretrained=None, device="cpu", batch_size=1, num_frames=16, fps=None, max_frames=None,
                 temporal_pool_k=None, spatial_pool_p=None, temporal_sample_s=None, max_new_tokens=32, **kwargs):
        super().__init__()
        self.model, self.processor = load(pretrained, device or "cpu")
        ints = lambda v: None if v in (None, "", "None") else int(v)  # noqa: E731  (model_args arrive as strings)
        set_token_reduction(self.model, self.processor, ints(temporal_pool_k), ints(spatial_pool_p),
                            ints(temporal_sample_s))
        self.frames = {"num_frames": None if fps not in (None, "", "None") else ints(num_frames),
                       "fps": None if fps in (None, "", "None") else float(fps), "max_frames": ints(max_frames)}
        self.max_new_tokens = int(max_new_tokens)
        self._batch_size = int(batch_size or 1)

    @property
    def batch_size(self):
        return self._batch_size

    # -- one request ---------------------------------------------------------------------------------

    def _prompt_and_features(self, context, doc_to_visual, doc_id, task, split):
        """Prompt ids (placeholder expanded) and the video's features for one request."""
        doc = self.task_dict[task][split][doc_id]
        visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
        content = ([{"type": "video"}] if visuals else []) + [{"type": "text", "text": context}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        if not visuals:
            return expanded_prompt_ids(self.processor, text, None), None
        kwargs = {key: value for key, value in self.frames.items() if value is not None}
        if kwargs.get("fps") is not None:
            kwargs.setdefault("num_frames", None)
        decoded = self.processor.video_processor([visuals[0]], **kwargs)
        pixels = torch.as_tensor(decoded["pixel_values_videos"]).to(self.model.device, self.model.dtype)
        count = int(decoded["video_num_frames"][0])
        features = self.model.model.get_video_features(pixels, torch.tensor([count])).pooler_output[0]
        return expanded_prompt_ids(self.processor, text, count), features

    @torch.no_grad()
    def loglikelihood(self, requests):
        results = []
        for context, continuation, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            if not isinstance(continuation, str):
                continuation = continuation(self.task_dict[task][split][doc_id])
            prompt, features = self._prompt_and_features(context, doc_to_visual, doc_id, task, split)
            # lmms-eval puts its target delimiter (a space) before the choice; the answer is scored as the
            # model's whole answer, as `storm-hf eval` scores an option.
            tokens = self.processor.tokenizer(continuation.strip(), add_special_tokens=False)["input_ids"]
            if not tokens:
                raise ValueError(f"The continuation {continuation!r} tokenizes to nothing.")
            ids = torch.tensor([prompt + tokens], device=self.model.device)
            logits = self.model(input_ids=ids, mm_encoder_outputs=video_outputs([features])).logits[0]
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)  # (len(tokens), vocab)
            target = torch.tensor(tokens, device=self.model.device)
            total = float(logprobs[torch.arange(len(tokens)), target].sum())
            greedy = bool((logprobs.argmax(-1) == target).all())
            results.append(GenerationResult(text=(-total, greedy)))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (-total, greedy))
        return results

    @torch.no_grad()
    def generate_until(self, requests):
        results = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            gen_kwargs = dict(gen_kwargs or {})
            prompt, features = self._prompt_and_features(context, doc_to_visual, doc_id, task, split)
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            ids = torch.tensor([prompt], device=self.model.device)
            output = self.model.generate(
                input_ids=ids, mm_encoder_outputs=video_outputs([features]),
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)), **sampling)
            text = self.processor.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            results.append(text.strip())
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("STORM's lmms-eval model answers single-round requests only.")
