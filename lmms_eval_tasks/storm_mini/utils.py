"""The miniature temporal video-QA test split (storm_hf.miniature.temporal_qa) as lmms-eval tasks; the prompts are built
by storm_hf's own helpers, so `storm-hf eval` asks exactly the same questions."""

from storm_hf.evaluation.runner import answer_letter, lettered_options, parse_letter


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return list(doc["options"])


def doc_to_target(doc):
    return doc["answer"]


def doc_to_text_letters(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question'].rstrip()}\n{lettered_options(doc['options'])}"


def process_results_letters(doc, results):
    record = {"options": doc["options"], "answer": doc["answer"], "messages": [{"role": "user", "content": "x"}]}
    return {"acc": float(parse_letter(results[0], doc["options"]) == answer_letter(record))}
