## What the headless test scripts (test_client.gd, test_input.gd) share: the "OK ..." / "FAIL ..." output
## that tests/test_godot_client.py reads, and ending the run (exit 1) on the first failure only.
## The scripts extend this file; tests/test_godot_client.py copies it next to them.
extends SceneTree

## Set once the run has ended (failed or passed); later failures are not reported.
var done := false


func say(line: String) -> void:
	print(line)


func fail(why: String) -> void:
	if done:
		return
	done = true
	say("FAIL " + why)
	quit(1)


func check(cond: bool, why: String) -> bool:
	if not cond:
		fail(why)
	return cond
