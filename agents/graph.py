"""The LangGraph supervisor, built per run from the tenant's resolved entitlements.

    retrieve -> agent -> (tools -> agent)* -> finalize -> review -> END

- retrieve: playbook passages and the consultant's past corrections for similar questions;
- agent: the entitled chat model, bound only to the entitled tools;
- tools: executes tool calls, and refuses (and audits) any tool the tenant is not entitled
  to, whatever the model or a prompt injection asks for;
- finalize: the answer becomes a draft in the review queue, or is sent, per tenant policy;
- review: pauses the run (LangGraph `interrupt`) until the consultant approves, edits,
  overrides or rejects it; her decision resumes the run.

Every model and tool call goes through billing.usage.guarded_call.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypedDict

from django.conf import settings
from langchain_core.messages import AIMessage, AnyMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

from agents.llm import CONTEXT_KEY, chat_model_for
from agents.models import AgentRun
from agents.registry import Resolved
from agents.retrieval import search_playbook, similar_corrections
from agents.tools import TOOLS, ToolContext, ToolError, entitled_specs, format_result, passage_dict
from audit.actions import record_audit_event
from billing.models import UsageEvent
from billing.usage import estimate_input_tokens, guarded_call


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    question: str
    passages: list[dict[str, Any]]
    corrections: list[dict[str, Any]]
    handoff_reason: str | None
    confidence: str
    rounds: int
    message_id: str | None
    needs_review: bool
    outcome: str | None


def _text(message: AnyMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content.strip()
    parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
    return "".join(parts).strip()


def system_prompt(resolved: Resolved, state: AgentState) -> SystemMessage:
    lines = [resolved.system_prompt]
    corrections = state.get("corrections") or []
    if corrections:
        lines.append("How your consultant answered similar questions before (follow her lead):")
        for c in corrections:
            lines.append(f"Q: {c['question']}\nA: {c['final']}")
    passages = state.get("passages") or []
    if passages:
        lines.append("Playbook passages:")
        for i, p in enumerate(passages, start=1):
            lines.append(f"[{i}] {p['title']}: {p['text']}")
    else:
        lines.append("No playbook passage matched the question.")
    context = {
        "question": state.get("question", ""),
        "passages": passages,
        "corrections": corrections,
    }
    return SystemMessage(content="\n\n".join(lines), additional_kwargs={CONTEXT_KEY: context})


def build_graph(run: AgentRun, resolved: Resolved, checkpointer: Any) -> Any:
    handle = chat_model_for(resolved)
    model_name = handle.name
    schemas = [] if handle.offline else [spec.schema() for spec in entitled_specs(resolved.tools)]
    run.model_name = model_name

    def retrieve(state: AgentState) -> dict[str, Any]:
        question = state["question"]
        passages = [passage_dict(p) for p in search_playbook(question, k=5)]
        corrections = [
            {"question": c.question, "final": c.final, "score": round(score, 4)}
            for c, score in similar_corrections(question, k=3)
            if score >= 0.3  # unrelated corrections would only mislead the model
        ]
        return {"passages": passages, "corrections": corrections, "rounds": 0}

    def agent(state: AgentState) -> dict[str, Any]:
        rounds = state.get("rounds", 0)
        prompt = system_prompt(resolved, state)
        response: AIMessage = guarded_call(
            kind=UsageEvent.Kind.MODEL,
            run=run,
            step=f"model:{rounds}",
            model=model_name,
            call=lambda: handle.invoke([prompt, *state["messages"]], schemas),
            estimated_input_tokens=estimate_input_tokens([prompt, *state["messages"]]),
        )
        confidence = response.response_metadata.get("confidence", "medium")
        return {"messages": [response], "rounds": rounds + 1, "confidence": confidence}

    def route(state: AgentState) -> str:
        last = state["messages"][-1]
        if (
            getattr(last, "tool_calls", None)
            and state.get("rounds", 0) <= settings.AGENT_MAX_TOOL_ROUNDS
        ):
            return "tools"
        return "finalize"

    def tools(state: AgentState) -> dict[str, Any]:
        last = state["messages"][-1]
        results: list[ToolMessage] = []
        passages = list(state.get("passages") or [])
        handoff = state.get("handoff_reason")
        for call in getattr(last, "tool_calls", []):
            name = call["name"]
            if name not in resolved.tools or name not in TOOLS:
                record_audit_event(
                    "agent.tool_refused",
                    actor_type="agent",
                    resource_type="tool",
                    resource_id=name,
                    agent_run_id=run.id,
                    context={"reason": "not entitled", "arguments": call.get("args", {})},
                )
                results.append(
                    ToolMessage(
                        content=f"Refused: the tool '{name}' is not available to this assistant.",
                        tool_call_id=call["id"],
                        status="error",
                    )
                )
                continue
            ctx = ToolContext(config=resolved.tools[name])
            spec, args = TOOLS[name], dict(call.get("args", {}))
            try:
                output: str = guarded_call(
                    kind=UsageEvent.Kind.TOOL,
                    run=run,
                    step=f"tool:{call['id']}",
                    tool=name,
                    call=functools.partial(spec.func, args, ctx),
                )
                status = "success"
            except ToolError as exc:
                output, status = f"Error: {exc}", "error"
            record_audit_event(
                "agent.tool_called",
                actor_type="agent",
                resource_type="tool",
                resource_id=name,
                agent_run_id=run.id,
                context={"status": status},
            )
            passages.extend(p for p in ctx.passages if p not in passages)
            handoff = ctx.handoff_reason or handoff
            results.append(
                ToolMessage(content=format_result(output), tool_call_id=call["id"], status=status)
            )
        return {"messages": results, "passages": passages, "handoff_reason": handoff}

    def finalize(state: AgentState) -> dict[str, Any]:
        from agents.runs import create_answer

        answer = next(
            (
                _text(m)
                for m in reversed(state["messages"])
                if isinstance(m, AIMessage) and _text(m)
            ),
            "",
        )
        message, needs_review = create_answer(
            run,
            answer=answer,
            passages=state.get("passages") or [],
            confidence=state.get("confidence", "medium"),
            handoff_reason=state.get("handoff_reason"),
        )
        return {"message_id": str(message.id), "needs_review": needs_review}

    def review(state: AgentState) -> dict[str, Any]:
        if not state.get("needs_review"):
            return {"outcome": "sent"}
        from agents.runs import apply_review

        decision = interrupt({"message_id": state["message_id"], "question": state["question"]})
        apply_review(run, decision)
        return {"outcome": decision.get("action")}

    graph = StateGraph(AgentState)
    graph.add_node("retrieve", retrieve)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_node("finalize", finalize)
    graph.add_node("review", review)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "agent")
    graph.add_conditional_edges("agent", route, {"tools": "tools", "finalize": "finalize"})
    graph.add_edge("tools", "agent")
    graph.add_edge("finalize", "review")
    graph.add_edge("review", END)
    return graph.compile(checkpointer=checkpointer)
