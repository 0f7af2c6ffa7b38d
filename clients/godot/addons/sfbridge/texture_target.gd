## How SFBridgeStream shows its texture on the node its `target` names: the `texture` of a TextureRect,
## Sprite2D or Sprite3D; a material property of a MeshInstance3D (or other GeometryInstance3D); or the
## sky of a WorldEnvironment (a PanoramaSkyMaterial with the stream as panorama).
extends RefCounted


## Puts texture on node. material_property: the property set on a GeometryInstance3D's material
## (StandardMaterial3D: albedo_texture; ShaderMaterial: a shader uniform name).
static func show_on(node: Node, texture: Texture2D, material_property: String) -> void:
	if node is WorldEnvironment:
		var env: Environment = node.environment
		if env == null:
			env = Environment.new()
			node.environment = env
		if env.sky == null:
			env.sky = Sky.new()
		var mat := env.sky.sky_material as PanoramaSkyMaterial
		if mat == null:
			mat = PanoramaSkyMaterial.new()
			env.sky.sky_material = mat
		mat.panorama = texture
		env.background_mode = Environment.BG_SKY
	elif node is GeometryInstance3D and not ("texture" in node):
		var mat: Material = node.material_override
		if mat == null and node is MeshInstance3D:
			mat = node.get_active_material(0)
			if mat != null:
				mat = mat.duplicate()  # do not modify a shared resource
				node.material_override = mat
		if mat == null:
			mat = StandardMaterial3D.new()
			mat.shading_mode = BaseMaterial3D.SHADING_MODE_UNSHADED
			node.material_override = mat
		if mat is ShaderMaterial:
			mat.set_shader_parameter(material_property, texture)
		else:
			mat.set(material_property, texture)
	elif "texture" in node:
		node.texture = texture
	else:
		push_warning("sfbridge: do not know how to show a texture on %s" % node.get_class())
