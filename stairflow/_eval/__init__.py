"""Judging answers: staircase against normal mode (or two graphs), pairwise, on any judge.

`judge` holds the judge's prompt, its verdicts and a pair's outcome over both orders;
`stats` the win rate, its bootstrap interval and the length-controlled win rate. Both are
sans I/O; the command that runs the answers and asks the judge comes next (issue 19).
"""
