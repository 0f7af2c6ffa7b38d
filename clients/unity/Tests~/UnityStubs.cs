// Declarations-only stand-in for the parts of the UnityEngine API that clients/unity/Runtime/Unity
// and Samples~ use. tests/test_csharp_client.py compiles those scripts against it with mcs to
// catch syntax and type errors in CI. Nothing here behaves like Unity; the Unity behaviour itself
// is NOT exercised by any test. Keep signatures identical to Unity's (2021.3+).
#pragma warning disable 0067, 0649, 0169, 0414
using System;

namespace UnityEngine
{
    public class Object
    {
        public string name { get; set; }
        public static void Destroy(Object obj) { }
        public static implicit operator bool(Object o) { return !ReferenceEquals(o, null); }
    }
    public class Component : Object
    {
        public T GetComponent<T>() { return default(T); }
        public GameObject gameObject { get { return null; } }
    }
    public sealed class GameObject : Object { }
    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour { }

    public enum FilterMode { Point, Bilinear, Trilinear }
    public enum TextureWrapMode { Repeat, Clamp, Mirror, MirrorOnce }
    public enum TextureFormat { Alpha8 = 1, RGB24 = 3, RGBA32 = 4 }

    public class Texture : Object
    {
        public virtual int width { get { return 0; } set { } }
        public virtual int height { get { return 0; } set { } }
        public FilterMode filterMode { get; set; }
        public TextureWrapMode wrapMode { get; set; }
    }
    public sealed class Texture2D : Texture
    {
        public Texture2D(int width, int height, TextureFormat textureFormat, bool mipChain) { }
        public TextureFormat format { get { return TextureFormat.RGB24; } }
        public void LoadRawTextureData(byte[] data) { }
        public void Apply(bool updateMipmaps, bool makeNoLongerReadable) { }
        public bool Reinitialize(int width, int height, TextureFormat format, bool hasMipMap) { return true; }
    }
    public enum RenderTextureFormat { ARGB32 = 0 }
    public class RenderTexture : Texture
    {
        public RenderTexture(int width, int height, int depth, RenderTextureFormat format) { }
        public bool Create() { return true; }
        public void Release() { }
    }
    public class Camera : Behaviour
    {
        public RenderTexture targetTexture { get; set; }
        public void Render() { }
    }
    public sealed class SystemInfo
    {
        public static bool supportsAsyncGPUReadback { get { return true; } }
    }
    public class Time
    {
        public static float unscaledTime { get { return 0f; } }
    }
    public struct Mathf
    {
        public static int Clamp(int value, int min, int max) { return value; }
        public static float Clamp(float value, float min, float max) { return value; }
    }
    public static class ImageConversion
    {
        public static bool LoadImage(Texture2D tex, byte[] data, bool markNonReadable) { return true; }
    }
    public sealed class Shader : Object
    {
        public static Shader Find(string name) { return null; }
    }
    public class Material : Object
    {
        public Material(Shader shader) { }
        public Texture mainTexture { get; set; }
        public bool HasProperty(string name) { return false; }
        public void SetTexture(string name, Texture value) { }
    }
    public class Renderer : Component
    {
        public Material material { get; set; }
        public Material sharedMaterial { get; set; }
    }
    public sealed class RenderSettings : Object
    {
        public static Material skybox { get; set; }
    }
    public static class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
        public static void LogError(object message) { }
        public static void LogException(Exception exception) { }
    }

    public enum KeyCode { None = 0, Return = 13, P = 112, R = 114, S = 115 }
    public sealed class Input
    {
        public static bool GetKeyDown(KeyCode key) { return false; }
    }
    public static class Random
    {
        public static int Range(int minInclusive, int maxExclusive) { return minInclusive; }
    }
    public struct Rect
    {
        public Rect(float x, float y, float width, float height) { }
    }
    public enum EventType { MouseDown = 0, KeyDown = 4 }
    public class Event
    {
        public static Event current { get { return null; } }
        public EventType type { get; set; }
        public KeyCode keyCode { get; set; }
    }
    public sealed class GUILayoutOption { }
    public class GUI
    {
        public static void SetNextControlName(string name) { }
        public static string GetNameOfFocusedControl() { return ""; }
    }
    public class GUILayout
    {
        public static void BeginArea(Rect screenRect) { }
        public static void EndArea() { }
        public static void BeginHorizontal(params GUILayoutOption[] options) { }
        public static void EndHorizontal() { }
        public static string TextField(string text, params GUILayoutOption[] options) { return text; }
        public static bool Button(string text, params GUILayoutOption[] options) { return false; }
        public static void Label(string text, params GUILayoutOption[] options) { }
        public static GUILayoutOption Width(float width) { return null; }
    }

    [AttributeUsage(AttributeTargets.Field)] public class HeaderAttribute : Attribute { public HeaderAttribute(string header) { } }
    [AttributeUsage(AttributeTargets.Field)] public class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }
    [AttributeUsage(AttributeTargets.Field)] public class SerializeField : Attribute { }
    [AttributeUsage(AttributeTargets.Field)] public sealed class RangeAttribute : Attribute { public RangeAttribute(float min, float max) { } }
    [AttributeUsage(AttributeTargets.Method)] public sealed class ContextMenu : Attribute { public ContextMenu(string itemName) { } }
    [AttributeUsage(AttributeTargets.Class)] public sealed class DisallowMultipleComponent : Attribute { }
    [AttributeUsage(AttributeTargets.Class)] public sealed class AddComponentMenu : Attribute { public AddComponentMenu(string menuName) { } }
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute { public RequireComponent(Type requiredComponent) { } }
}

namespace UnityEngine.Rendering
{
    public struct AsyncGPUReadbackRequest
    {
        public bool done { get { return true; } }
        public bool hasError { get { return false; } }
        public int width { get { return 0; } }
        public int height { get { return 0; } }
        public Unity.Collections.NativeArray<T> GetData<T>(int layer = 0) where T : struct { return default(Unity.Collections.NativeArray<T>); }
    }
    public static class AsyncGPUReadback
    {
        public static AsyncGPUReadbackRequest Request(Texture src, int mipIndex, TextureFormat dstFormat, Action<AsyncGPUReadbackRequest> callback)
        {
            return default(AsyncGPUReadbackRequest);
        }
    }
}

namespace Unity.Collections
{
    public struct NativeArray<T> where T : struct
    {
        public int Length { get { return 0; } }
        public void CopyTo(T[] array) { }
    }
}

namespace UnityEngine.UI
{
    public class RawImage : MonoBehaviour
    {
        public Texture texture { get; set; }
    }
}
