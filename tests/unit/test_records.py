import pytest

from include.data.records import QUARANTINE_REASONS, Rejected, normalize
from include.prompts import format_prompt


@pytest.mark.parametrize(
    "raw, question, answer, contexts",
    [
        ({"instruction": "Summarize", "input": "EKS is managed.", "output": "Managed K8s."},
         "Summarize", "Managed K8s.", ["EKS is managed."]),
        ({"instruction": "Say hi", "input": "", "output": "hi"}, "Say hi", "hi", []),
        ({"prompt": "2+2?", "completion": "4"}, "2+2?", "4", []),
        ({"question": "Q?", "context": "C.", "answer": "A."}, "Q?", "A.", ["C."]),
        ({"question": "Q?", "contexts": ["C1", "C2", " "], "answer": "A."}, "Q?", "A.", ["C1", "C2"]),
    ],
)
def test_every_shape_maps_onto_one_schema(raw, question, answer, contexts):
    r = normalize(raw)
    assert (r.question, r.answer, r.contexts) == (question, answer, contexts)


def test_chat_messages_keep_system_and_history():
    r = normalize({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is EKS?"},
        {"role": "assistant", "content": "Managed Kubernetes."},
        {"role": "user", "content": "And Karpenter?"},
        {"role": "assistant", "content": "A node autoscaler."},
    ]})
    assert r.system == "Be brief."
    assert r.answer == "A node autoscaler."
    assert r.question.endswith("user: And Karpenter?")
    assert "assistant: Managed Kubernetes." in r.question


@pytest.mark.parametrize(
    "raw, reason",
    [
        ([1, 2], "not_an_object"),
        ("text", "not_an_object"),
        ({"text": "hello"}, "unknown_shape"),
        ({"question": "Q?", "answer": 5}, "wrong_type"),
        ({"question": None, "answer": "A"}, "wrong_type"),
        ({"question": "Q?", "context": {"a": 1}, "answer": "A"}, "wrong_type"),
        ({"messages": "hi"}, "wrong_type"),
        ({"messages": [{"role": "user"}]}, "wrong_type"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "empty_answer"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "empty_question"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(Rejected) as e:
        normalize(raw)
    assert e.value.reason == reason
    assert reason in QUARANTINE_REASONS


def test_prompt_layout_is_stable():
    assert format_prompt("Q?", ["C1", "C2"], "S") == "S\n\nContext:\nC1\n\nC2\n\nQuestion: Q?\nAnswer:"
    assert format_prompt("Q?", []) == "Question: Q?\nAnswer:"
