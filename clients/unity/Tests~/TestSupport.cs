// What the console tests (ConsoleTest.cs, InputTest.cs, RetryTest.cs) share: the "OK <name>" lines
// that the pytest tests (test_csharp_client.py, test_raw_client_retries.py) read and the Fail exception
// a failed check throws (each Main prints it as "FAIL <reason>"). Compiled with each test program; the
// tests import it with `using static`; also the "--name value" command line and the ALL_OK/FAIL ending.

using System;
using System.Collections.Generic;
using System.Globalization;

static class TestSupport
{
    public class Fail : Exception { public Fail(string m) : base(m) { } }

    public static void Check(bool cond, string what)
    {
        if (!cond) throw new Fail(what);
    }

    public static void Ok(string name, string detail = "")
    {
        Console.WriteLine("OK " + name + (detail.Length > 0 ? " " + detail : ""));
        Console.Out.Flush();
    }

    /// <summary>A test program's "--name value" pairs, each name one of <paramref name="known"/>;
    /// null (after printing "FAIL ...") on an unknown name or a name without a value.</summary>
    public static Dictionary<string, string> Options(string[] args, params string[] known)
    {
        var options = new Dictionary<string, string>();
        for (int i = 0; i < args.Length; i += 2)
        {
            string name = args[i].StartsWith("--") ? args[i].Substring(2) : null;
            if (name == null || Array.IndexOf(known, name) < 0 || i + 1 >= args.Length)
            {
                Console.WriteLine("FAIL unknown argument or missing value: " + args[i]);
                return null;
            }
            options[name] = args[i + 1];
        }
        return options;
    }

    public static int Int(Dictionary<string, string> options, string name, int fallback)
    {
        string v;
        return options.TryGetValue(name, out v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
    }

    /// <summary>Runs the checks: "ALL_OK" and exit 0, or "FAIL reason" (stack on stderr) and exit 1.</summary>
    public static int RunChecks(Action checks)
    {
        try
        {
            checks();
            Console.WriteLine("ALL_OK");
            return 0;
        }
        catch (Exception e)
        {
            Console.WriteLine("FAIL " + e.Message);
            Console.Error.WriteLine(e);
            return 1;
        }
    }
}
