## Editor plugin entry: registers the SFBridgeStream node type in the "Create Node" dialog.
## (The node also works without enabling the plugin: it has a class_name.)
@tool
extends EditorPlugin


func _enter_tree() -> void:
	add_custom_type("SFBridgeStream", "Node", preload("sfbridge_stream.gd"), null)


func _exit_tree() -> void:
	remove_custom_type("SFBridgeStream")
