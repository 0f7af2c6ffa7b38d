## What the headless test scripts (test_client.gd, test_input.gd, test_retry.gd) share: the "OK ..." /
## "FAIL ..." output that the pytest tests read, ending the run (exit 1) on the first failure only, and
## the command line after "--" ("--name value" pairs, or a bare "--flag" for true).
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


## The user arguments: {"name": "value"} for "--name value", {"flag": true} for a bare "--flag".
func user_args() -> Dictionary:
	var a := OS.get_cmdline_user_args()
	var out := {}
	var i := 0
	while i < a.size():
		if a[i].begins_with("--") and i + 1 < a.size() and not a[i + 1].begins_with("--"):
			out[a[i].substr(2)] = a[i + 1]
			i += 2
		else:
			out[a[i].substr(2)] = true
			i += 1
	return out
