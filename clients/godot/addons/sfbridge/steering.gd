## Argument checks of the steering requests (docs/PROTOCOL.md 2.2), shared by SFBridgeStream's
## set_prompt / set_weighted_prompt / set_seed / set_steps. They mirror the daemon's rules, so a bad
## option fails at once with a message naming it instead of a round trip later.
extends RefCounted

const PROMPT_OPTIONS := ["transition", "blend_blocks", "interp", "mix", "recache", "at_block", "at_pts"]
const MAX_WEIGHTED_PROMPTS := 8
const MAX_PROMPT_CHARS := 4000
const MAX_AT_BLOCK := 2147483647
const MAX_AT_PTS := 1e8


static func check_text(text: String, name: String) -> String:
	var n := text.strip_edges().length()
	if n == 0:
		return "%s must not be empty" % name
	if n > MAX_PROMPT_CHARS:
		return "%s has %d characters, max %d" % [name, n, MAX_PROMPT_CHARS]
	return ""


## Fills the prompt options into args; returns why they are refused ("" = fine).
static func prompt_options(args: Dictionary, options: Dictionary, entries: int) -> String:
	for k in options:
		if not k in PROMPT_OPTIONS:
			return "unknown prompt option '%s' (known: %s)" % [k, ", ".join(PROMPT_OPTIONS)]
	var transition := str(options.get("transition", "cut"))
	if transition != "cut" and transition != "blend":
		return "transition must be cut or blend, got '%s'" % transition
	args["transition"] = transition
	if transition == "blend":
		var n := int(options.get("blend_blocks", 4))
		if n < 1 or n > 64:
			return "blend_blocks must be in 1..64, got %d" % n
		args["blend_blocks"] = n
	for key in ["interp", "mix"]:
		if not options.has(key):
			continue
		var v := str(options[key])
		if v != "linear" and v != "slerp":
			return "%s must be linear or slerp, got '%s'" % [key, v]
		if key == "mix" and entries == 0:
			return "mix combines a weighted list: use set_weighted_prompt()"
		if key == "mix" and v == "slerp" and entries != 2:
			return "mix slerp takes exactly 2 prompts, got %d" % entries
		args[key] = v
	if options.get("recache", false):
		args["recache"] = true
	return schedule(args, int(options.get("at_block", -1)), float(options.get("at_pts", -1.0)))


## at_block (>= 0) or at_pts (>= 0) into args; negative = not given. Both -> refused.
static func schedule(args: Dictionary, at_block: int, at_pts: float) -> String:
	if at_block >= 0 and at_pts >= 0.0:
		return "give at_block or at_pts, not both"
	if at_block > MAX_AT_BLOCK:
		return "at_block must be in 0..%d, got %d" % [MAX_AT_BLOCK, at_block]
	if at_pts > MAX_AT_PTS:
		return "at_pts must be in 0..%s seconds, got %s" % [MAX_AT_PTS, at_pts]
	if at_block >= 0:
		args["at_block"] = at_block
	elif at_pts >= 0.0:
		args["at_pts"] = at_pts
	return ""


## Checks a weighted list ([text, weight] or {text, weight} entries) and appends the wire maps
## {text, weight} to entries; returns why it is refused ("" = fine).
static func weighted_entries(prompts: Array, entries: Array) -> String:
	var err := ""
	var positive := false
	if prompts.size() < 1 or prompts.size() > MAX_WEIGHTED_PROMPTS:
		err = "prompts must hold 1 to %d entries, got %d" % [MAX_WEIGHTED_PROMPTS, prompts.size()]
	for i in range(prompts.size()):
		if err != "":
			break
		var e: Variant = prompts[i]
		var text: Variant = null
		var weight: Variant = null
		if typeof(e) == TYPE_DICTIONARY:
			text = e.get("text")
			weight = e.get("weight")
		elif typeof(e) == TYPE_ARRAY and e.size() == 2:
			text = e[0]
			weight = e[1]
		if typeof(text) != TYPE_STRING or not (typeof(weight) == TYPE_INT or typeof(weight) == TYPE_FLOAT):
			err = "prompts[%d] must be [text, weight] or {text, weight}, got %s" % [i, e]
			break
		err = check_text(text, "prompts[%d] text" % i)
		if err == "" and (is_nan(float(weight)) or is_inf(float(weight)) or float(weight) < 0.0):
			err = "prompts[%d] weight must be a finite number >= 0, got %s" % [i, weight]
		positive = positive or float(weight) > 0.0
		entries.append({"text": text, "weight": float(weight)})
	if err == "" and not positive:
		err = "prompts weights must not all be 0"
	return err
