package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// writeConfig writes a configuration file for a test and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lifeboat.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A value in the file reaches the command: the agent's own check of
// --nbd-max-connections refuses the file's 0 and says where it was set,
// and the required --volume comes from the file too (the check that
// refuses the value runs after the required flags are checked).
func TestConfigFileApplied(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, "# an agent\nvolume:\n  - disk="+filepath.Join(dir, "disk.img")+",size=1MiB\n"+
		"journal-dir: "+filepath.Join(dir, "j")+"\nnbd-max-connections: 0\n")
	_, stderr, code := runApp(t, "agent", "--config", cfg)
	want := "--nbd-max-connections 0: want at least 1 (nbd-max-connections is set in " + cfg + ":5)"
	if code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, want 2 with %q:\n%s", code, want, stderr)
	}

	stdout, stderr, code := runApp(t, "config", "check", "agent", cfg)
	for _, want := range []string{"nbd-max-connections: 0  # " + cfg + ":5", "volume:  # " + cfg + ":2",
		"  - disk=" + filepath.Join(dir, "disk.img") + ",size=1MiB", "tag-interval: 5m  # default"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("config check: exit %d, want a line %q:\n%s%s", code, want, stdout, stderr)
		}
	}
}

// A flag on the command line wins over its environment variable, which
// wins over the file.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, "volume: [ \"disk="+filepath.Join(dir, "disk.img")+",size=1MiB\" ]\nnbd-max-connections: -3\n")
	for _, tt := range []struct {
		env  string
		args []string
		want string
	}{
		{"", nil, "--nbd-max-connections -3: want at least 1 (nbd-max-connections is set in " + cfg + ":2)\n"},
		{"-2", nil, "--nbd-max-connections -2: want at least 1\n"},
		{"-2", []string{"--nbd-max-connections", "-1"}, "--nbd-max-connections -1: want at least 1\n"},
		{"", []string{"--nbd-max-connections", "-1"}, "--nbd-max-connections -1: want at least 1\n"},
	} {
		if tt.env != "" {
			t.Setenv("LIFEBOAT_NBD_MAX_CONNECTIONS", tt.env)
		} else {
			os.Unsetenv("LIFEBOAT_NBD_MAX_CONNECTIONS")
		}
		_, stderr, code := runApp(t, append([]string{"agent", "--config", cfg}, tt.args...)...)
		if code != 2 || !strings.HasSuffix(stderr, tt.want) {
			t.Errorf("env %q, args %q: exit %d, want 2 ending in %q:\n%s", tt.env, tt.args, code, tt.want, stderr)
		}
	}
	os.Unsetenv("LIFEBOAT_NBD_MAX_CONNECTIONS")

	// The file itself may come from the environment.
	t.Setenv("LIFEBOAT_CONFIG", cfg)
	if _, stderr, code := runApp(t, "agent"); code != 2 || !strings.Contains(stderr, "--nbd-max-connections -3") {
		t.Errorf("LIFEBOAT_CONFIG: exit %d, want the file's value refused:\n%s", code, stderr)
	}
}

// Mistakes in the file are usage errors (exit 2) that name the file and
// the line, before anything starts.
func TestConfigFileErrors(t *testing.T) {
	for _, tt := range []struct {
		name, body, want string
	}{
		{"unknown key", "journal-dir: /tmp/j\nvolumes: [a=/dev/sdb]\n",
			`:2: unknown key "volumes" for lifeboat agent (did you mean "volume"?); 'lifeboat config example agent' lists the keys`},
		{"unknown key far from any", "colour: blue\n", `:1: unknown key "colour" for lifeboat agent; 'lifeboat`},
		{"malformed", "journal-dir: /tmp/j\nvolume: [a=/dev/sdb\n", ":2: not valid YAML: did not find expected ',' or ']'"},
		{"malformed on line 1", "volume: [a=/dev/sdb\n", ":1: not valid YAML: did not find expected ',' or ']'"},
		{"unclosed quote", "journal-dir: /tmp/j\nsegment-age: \"2s\n", ":2: not valid YAML: found unexpected end of stream"},
		{"control character", "journal-dir: /tmp/j\n\nsegment-age: 2s\x01\n", ":3: not valid YAML: control characters are not allowed"},
		{"key without a value", "journal-dir: /tmp/j\nsegment-age\nnbd: x\n", ":2: not valid YAML: could not find expected ':'"},
		{"bad indentation", "journal-dir: /tmp/j\n  segment-age: 2s\n", ":2: not valid YAML: mapping values are not allowed"},
		{"tab", "journal-dir: /tmp/j\n\tsegment-age: 2s\n", ":2: not valid YAML: found a tab character that violates indentation"},
		{"mapping for a value", "journal-dir:\n  path: /tmp/j\n", ":2: journal-dir takes a single value, found a mapping"},
		{"mapping for a list", "volume:\n  db: /dev/sdb\n", ":2: volume takes a value or a list of values, found a mapping"},
		{"list for a value", "segment-age: [1s, 2s]\n", ":1: segment-age takes one value, not a list"},
		{"mapping in a list", "volume:\n  - a=/dev/sdb\n  - db: /dev/sdc\n", ":3: volume: each item must be a single value, found a mapping"},
		{"empty list", "volume: []\n", ":1: volume: an empty list; remove the key for the default"},
		{"no value", "volume: [a=/dev/sdb]\nsegment-age:\n", ":2: segment-age has no value"},
		{"bad duration", "volume: [a=/dev/sdb]\n\nsegment-age: soon\n",
			`:3: segment-age: invalid value "soon": want a duration such as 500ms, 10s, 5m or 1h`},
		{"bad number", "volume: [a=/dev/sdb]\nnbd-max-connections: many\n", `:2: nbd-max-connections: invalid value "many": want a whole number`},
		{"twice", "segment-age: 1s\nsegment-age: 2s\n", `:2: key "segment-age" is given twice (first on line 1)`},
		{"config", "config: /etc/lifeboat/other.yaml\n", `:1: key "config": a configuration file cannot name another one`},
		{"not a mapping", "- volume: a=/dev/sdb\n", ":1: want a mapping of settings (key: value), found a list"},
		{"two documents", "segment-age: 1s\n---\nsegment-age: 2s\n", ":2: a second YAML document"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeConfig(t, tt.body)
			stdout, stderr, code := runApp(t, "agent", "--config", cfg)
			if code != 2 || !strings.Contains(stderr, "lifeboat: "+cfg+tt.want) {
				t.Errorf("exit %d, want 2 with %q:\n%s%s", code, cfg+tt.want, stdout, stderr)
			}
		})
	}
	_, stderr, code := runApp(t, "agent", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 2 || !strings.Contains(stderr, "--config: open ") || !strings.Contains(stderr, "missing.yaml: no such file") {
		t.Errorf("missing file: exit %d, want 2 naming it:\n%s", code, stderr)
	}
	// Without a volume the agent is managed by its configuration server,
	// and needs the registration the file's identity-dir does not hold.
	_, stderr, code = runApp(t, "agent", "--config", writeConfig(t, "identity-dir: "+t.TempDir()+"\n"))
	if code != 2 || !strings.Contains(stderr, `no registration in`) || !strings.Contains(stderr, "or give --volume") {
		t.Errorf("no volume: exit %d, want 2 asking for a registration or a volume:\n%s", code, stderr)
	}
	for _, args := range [][]string{{"config", "--help"}, {"config", "example", "--help"}, {"config", "check", "--help"}} {
		if stdout, _, code := runApp(t, args...); code != 0 || !strings.Contains(stdout, "xample") {
			t.Errorf("%q: exit %d, no example in help:\n%s", args, code, stdout)
		}
	}
	for _, args := range [][]string{{"config", "example", "bogus"}, {"config", "check", "bogus", "f"}} {
		_, stderr, code = runApp(t, args...)
		if code != 2 || !strings.Contains(stderr, `unknown role "bogus": want one of agent, server, process-server, master-target`) {
			t.Errorf("%q: exit %d, want 2 listing the roles:\n%s", args, code, stderr)
		}
	}
}

// The example of every role is a valid file that sets nothing; with every
// key uncommented it is still valid, and sets each key to what the example
// shows (the defaults).
func TestConfigExampleParsesBack(t *testing.T) {
	for _, role := range roleCommands {
		t.Run(role, func(t *testing.T) {
			example := runJSON(t, "config", "example", role)
			plain := writeConfig(t, example)
			stdout, stderr, code := runApp(t, "config", "check", role, plain)
			if code != 0 || strings.Contains(stdout, "# "+plain+":") {
				t.Fatalf("config check of the example: exit %d, want 0 with only defaults\n%s%s", code, stdout, stderr)
			}
			// A key follows the line that names its environment variable;
			// the items of a list follow it.
			lines := strings.Split(example, "\n")
			keys := 0
			for i := 1; i < len(lines); i++ {
				if strings.HasPrefix(lines[i-1], "# Environment: ") {
					lines[i] = strings.TrimPrefix(lines[i], "# ")
					keys++
				} else if strings.HasPrefix(lines[i], "#   - ") && !strings.HasPrefix(lines[i-1], "#") {
					lines[i] = strings.TrimPrefix(lines[i], "# ")
				}
			}
			cfg := writeConfig(t, strings.Join(lines, "\n"))
			stdout, stderr, code = runApp(t, "config", "check", role, cfg)
			if code != 0 {
				t.Fatalf("config check of the uncommented example: exit %d\n%s%s", code, stdout, stderr)
			}
			if n := strings.Count(stdout, "# "+cfg+":"); n != keys || keys < 5 {
				t.Errorf("%d settings come from the uncommented file, want its %d keys:\n%s", n, keys, stdout)
			}
		})
	}
}

// The example of the agent's file is pinned: review a change with
// go test ./cmd/lifeboat -run Golden -update.
func TestGoldenConfigExampleAgent(t *testing.T) {
	goldenText(t, "config_example_agent.yaml", runJSON(t, "config", "example", "agent"))
}

// goldenText is golden for a document that is not JSON.
func goldenText(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v: create it with: go test ./cmd/lifeboat -run Golden -update", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s; if the change is intended, run\n"+
			"\tgo test ./cmd/lifeboat -run Golden -update\nand review the diff of the file.\n%s", path, firstDiff(string(want), got))
	}
}

// reservedEnv are environment variables lifeboat reads for other purposes.
var reservedEnv = regexp.MustCompile(`^LIFEBOAT_(PPROF|AZURITE|REQUIRE_INTEGRATION|FAULT_.*)$`)

// Every flag of every role has its LIFEBOAT_ variable, shown in --help,
// and none is one lifeboat already reads for something else.
func TestConfigEnvVars(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	for _, c := range app.Commands {
		if !slices.Contains(roleCommands, c.Name) {
			continue
		}
		help, _, _ := runApp(t, c.Name, "--help")
		for _, f := range c.Flags {
			env := envVarName(f.Names()[0])
			if !slices.Contains(flagField(f, "EnvVars").Interface().([]string), env) {
				t.Errorf("lifeboat %s --%s has no %s", c.Name, f.Names()[0], env)
			}
			if reservedEnv.MatchString(env) {
				t.Errorf("lifeboat %s --%s: %s is already used by lifeboat for something else", c.Name, f.Names()[0], env)
			}
			if !strings.Contains(help, "$"+env) {
				t.Errorf("lifeboat %s --help does not show %s", c.Name, env)
			}
		}
	}
}

// FuzzConfigFile: whatever the file holds, the loader returns settings of
// known keys or a usage error that names the file; it never panics.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"volume: [a=/dev/sdb]\nsegment-age: 2s\n", "volume:\n  - a\n  - b\n", "x: &a [1]\ny: *a\n",
		"journal-dir: [\n", "- a\n", "---\na: 1\n---\n", "nbd: ''\n", "segment-age: {a: 1}\n", "",
		"<<: {volume: a}\n", "volume: !!binary aGVsbG8=\n", "? [a]\n: b\n",
	} {
		f.Add([]byte(s))
	}
	known := map[string]keyKind{"volume": kindList, "nbd": kindList, "journal-dir": kindScalar,
		"segment-age": kindScalar, "fuse": kindBool}
	f.Fuzz(func(t *testing.T, data []byte) {
		settings, err := parseConfigFile("f.yaml", data, "agent", known)
		if err != nil {
			var e *exitError
			if !errors.As(err, &e) || e.code != exitUsage || !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error %v: want a usage error that starts with the file name", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, s := range settings {
			kind, ok := known[s.Key]
			if !ok || seen[s.Key] || len(s.Values) == 0 || (kind != kindList && len(s.Values) != 1) || s.Line < 1 {
				t.Fatalf("setting %+v: unknown, repeated, empty or misplaced", s)
			}
			seen[s.Key] = true
		}
	})
}
