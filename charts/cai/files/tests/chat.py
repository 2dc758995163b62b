"""helm test: hold one real chat through the gateway and check the answer.

Creates a thread, runs the assistant on one user message and waits for the result
(LangGraph Server API: POST /threads, POST /threads/{id}/runs/wait). Fails unless the last
message is a non-empty AI message. Standard library only: it runs in the gateway image.
"""

import json
import os
import sys
import urllib.error
import urllib.request

BASE = os.environ["CAI_URL"].rstrip("/")
KEY = os.environ["CAI_API_KEY"]
ASSISTANT = os.environ.get("CAI_ASSISTANT_ID", "chat")
TIMEOUT = float(os.environ.get("CAI_TIMEOUT_SECONDS", "120"))


def post(path: str, body: dict) -> dict:
    """POST JSON with the API key and return the decoded JSON answer."""
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        sys.exit(f"POST {path} -> {err.code}: {err.read()[:500]!r}")


def text_of(message: dict) -> str:
    """The text of a message whose content is a string or a list of content parts."""
    content = message.get("content", "")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content).strip()


def main() -> None:
    thread = post("/threads", {"metadata": {"source": "helm-test"}})
    thread_id = thread["thread_id"]
    print(f"thread {thread_id}")
    state = post(
        f"/threads/{thread_id}/runs/wait",
        {
            "assistant_id": ASSISTANT,
            "input": {"messages": [{"role": "user", "content": "Say hello in one sentence."}]},
        },
    )
    messages = state.get("messages") or []
    if not messages:
        sys.exit(f"no messages in the run's result: {json.dumps(state)[:500]}")
    last = messages[-1]
    kind = last.get("type") or last.get("role")
    if kind not in ("ai", "assistant"):
        sys.exit(f"last message is {kind!r}, not an AI message: {json.dumps(last)[:500]}")
    answer = text_of(last)
    if not answer:
        sys.exit("the AI message is empty")
    print(f"assistant {ASSISTANT!r} answered: {answer[:200]}")


if __name__ == "__main__":
    main()
