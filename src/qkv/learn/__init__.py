"""The course: lessons as data, live widgets, questions graded live, the concept graph and progress.

`qkv learn` serves it in the explorer (its Learn page) or runs a lesson in the
terminal (``qkv learn --text ID``). Lessons are TOML files in ``course/lessons``
(see ``docs/course-format.md``); `load_course` reads and checks them.
"""

from qkv.learn.errors import LearnError

__all__ = ["LearnError"]
