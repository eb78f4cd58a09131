"""The architecture graph: concepts as nodes, prerequisites as edges, each locked, open or mastered.

A concept is *mastered* once the lesson that teaches it is mastered, *open*
when every concept its lesson needs is mastered, and *locked* otherwise; a
concept is *due* when its spaced review has come round. The layout is layered:
a concept sits one row below the deepest of its prerequisites, and the rows
keep the course's order, so the page draws the SVG from coordinates alone.

>>> from qkv.learn.course import load_course
>>> course = load_course()
>>> g = graph(course, {"lessons": {}, "concepts": {}}, now=0.0)
>>> g["nodes"][0]["state"], g["nodes"][-1]["state"]
('open', 'locked')
"""

from __future__ import annotations

import time
from typing import Any

from qkv.learn.course import Course, Lesson

__all__ = ["NODE_H", "NODE_W", "concept_state", "graph", "lesson_state", "review_due"]

NODE_W, NODE_H = 166, 40  # a node's box in SVG user units
GAP_X, GAP_Y = 20, 36
MAX_PER_ROW = 4


def _mastered(progress: dict[str, Any], concept: str) -> bool:
    return bool(progress.get("concepts", {}).get(concept, {}).get("mastered_at"))


def lesson_state(course: Course, lesson: Lesson, progress: dict[str, Any]) -> str:
    """``mastered`` (all its concepts), ``open`` (all its prerequisites mastered) or ``locked``."""
    if all(_mastered(progress, c.id) for c in lesson.concepts):
        return "mastered"
    return "open" if all(_mastered(progress, p) for p in lesson.prerequisites) else "locked"


def concept_state(course: Course, concept: str, progress: dict[str, Any]) -> str:
    if _mastered(progress, concept):
        return "mastered"
    lesson = course.lesson(course.concepts[concept].lesson)
    return "open" if all(_mastered(progress, p) for p in lesson.prerequisites) else "locked"


def review_due(course: Course, progress: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
    """Concepts whose review has come round (oldest first): ``[{"concept", "title", "lesson", "due_at"}]``."""
    now = time.time() if now is None else now
    due = []
    for ident, entry in progress.get("concepts", {}).items():
        review = entry.get("review")
        if review and review["due"] <= now and ident in course.concepts:
            c = course.concepts[ident]
            due.append({"concept": ident, "title": c.title, "lesson": c.lesson, "due_at": review["due"]})
    return sorted(due, key=lambda d: d["due_at"])


def _depths(course: Course) -> dict[str, int]:
    depth: dict[str, int] = {}

    def of(concept: str) -> int:
        if concept not in depth:
            prerequisites = course.concepts[concept].prerequisites
            depth[concept] = 1 + max((of(p) for p in prerequisites), default=-1)
        return depth[concept]

    for concept in course.concepts:
        of(concept)
    return depth


def graph(course: Course, progress: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Nodes with state and position, edges ``[from, to]``, and the drawing's size."""
    due = {d["concept"] for d in review_due(course, progress, now)}
    depth = _depths(course)
    order = {les.id: les.order for les in course.lessons}
    rows: list[list[str]] = []
    for level in range(max(depth.values(), default=-1) + 1):
        layer = sorted(
            (c for c in course.concepts if depth[c] == level), key=lambda c: order[course.concepts[c].lesson]
        )
        rows += [layer[i : i + MAX_PER_ROW] for i in range(0, len(layer), MAX_PER_ROW)]  # wide layers wrap
    width = MAX_PER_ROW * (NODE_W + GAP_X) + GAP_X
    nodes = []
    for r, row in enumerate(rows):
        offset = (width - len(row) * (NODE_W + GAP_X) + GAP_X) / 2
        for i, ident in enumerate(row):
            c = course.concepts[ident]
            nodes.append(
                {
                    "id": ident,
                    "title": c.title,
                    "summary": c.summary,
                    "lesson": c.lesson,
                    "state": concept_state(course, ident, progress),
                    "due": ident in due,
                    "practised": bool(progress.get("concepts", {}).get(ident, {}).get("practised_at")),
                    "prerequisites": list(c.prerequisites),
                    "x": round(offset + i * (NODE_W + GAP_X)),
                    "y": GAP_Y // 2 + r * (NODE_H + GAP_Y),
                    "w": NODE_W,
                    "h": NODE_H,
                }
            )
    edges = [[p, ident] for ident, c in course.concepts.items() for p in c.prerequisites]
    return {"nodes": nodes, "edges": edges, "width": width, "height": len(rows) * (NODE_H + GAP_Y) + GAP_Y // 2}
