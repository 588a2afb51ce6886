"""Drives contree-sdk's LangChain sandbox (``contree_sdk.langchain.sandbox.ContreeSandbox``) the
way deepagents does, for ``test_langchain_sandbox.py``.

It runs with the Python of the deepagents venv (``./scripts/install`` makes it: deepagents pins
versions of our own dependencies that sandtree's environment must not take), never with the
interpreter that runs the tests. It reads one JSON request on stdin and prints one JSON answer:

- ``{"url", "token", "image", "config"?, "calls": [{"method", "args"?, "kwargs"?}, ...]}``
  calls those backend methods, in order, on one sandbox (one contree-sdk session), and answers
  ``{"id", "results": [{"value": ...} | {"raised": "Type: message"}, ...]}``: an exception is
  reported in place, as the agent's tool call would meet it, and the next call still runs.
- ``{"url", "token", "image", "config"?, "agent": {"prompt", "turns": [...]}}`` runs a real
  deepagents agent (``create_deep_agent``) on that sandbox, its model a scripted chat model
  that answers each turn in order (``{"tool_calls": [{"name", "args"}]}`` or
  ``{"content"}``), and answers ``{"messages": [{"type", "name", "content"}, ...]}``.

Nothing here reaches a network other than the sandtree server named in the request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from typing import Any

from contree_sdk import ContreeSync  # type: ignore[import-untyped]
from contree_sdk.auth import JWTAuth  # type: ignore[import-untyped]
from contree_sdk.config import ContreeConfig  # type: ignore[import-untyped]
from contree_sdk.langchain.sandbox import ContreeSandbox  # type: ignore[import-untyped]


def _plain(value: Any) -> Any:
    """``value`` (deepagents' result dataclasses, TypedDicts, bytes) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        # Downloads are bytes; base64 keeps them exact through JSON.
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _sandbox(request: dict[str, Any]) -> Any:
    """A sandbox on a fresh session of ``request["image"]``, configured as the docs say."""
    # JWTAuth with explicit values: the SDK's default IAMAuth would aim at the hosted service.
    auth = JWTAuth(base_url=request["url"], token=request["token"])
    sdk = ContreeSync(ContreeConfig(auth=auth, **request.get("config", {})))
    return ContreeSandbox(sdk.images.use(request["image"]).session())


def _call(sandbox: Any, call: dict[str, Any]) -> dict[str, Any]:
    args = list(call.get("args", []))
    if call["method"] == "upload_files":
        # JSON has no bytes: uploads arrive as [path, text] pairs.
        args = [[(path, text.encode("utf-8")) for path, text in args[0]]]
    try:
        value = getattr(sandbox, call["method"])(*args, **call.get("kwargs", {}))
    except Exception as exc:  # reported to the test, as the agent's tool call would see it
        return {"raised": f"{type(exc).__name__}: {exc}"}
    return {"value": _plain(value)}


def _run_agent(sandbox: Any, agent: dict[str, Any]) -> dict[str, Any]:
    from deepagents import create_deep_agent  # type: ignore[import-not-found]
    from langchain_core.language_models.fake_chat_models import (  # type: ignore[import-not-found]
        FakeMessagesListChatModel,
    )
    from langchain_core.messages import AIMessage  # type: ignore[import-not-found]

    class ScriptedModel(FakeMessagesListChatModel):  # type: ignore[misc]
        """Answers each turn in order; the tools it is bound to change nothing it says."""

        def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
            return self

    turns = []
    for number, turn in enumerate(agent["turns"]):
        calls = [
            {"name": c["name"], "args": c["args"], "id": f"call-{number}-{i}"}
            for i, c in enumerate(turn.get("tool_calls", []))
        ]
        turns.append(AIMessage(turn.get("content", ""), tool_calls=calls))
    graph = create_deep_agent(model=ScriptedModel(responses=turns), backend=sandbox)
    state = graph.invoke({"messages": [{"role": "user", "content": agent["prompt"]}]})
    return {
        "messages": [
            {"type": m.type, "name": getattr(m, "name", None), "content": m.content}
            for m in state["messages"]
        ]
    }


def main() -> None:
    request = json.load(sys.stdin)
    sandbox = _sandbox(request)
    if "agent" in request:
        answer = _run_agent(sandbox, request["agent"])
    else:
        answer = {"id": sandbox.id, "results": [_call(sandbox, c) for c in request["calls"]]}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
