package main

import (
	"bytes"
	"encoding"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// The golden files in testdata/golden pin every `--output json` document,
// key by key. A field added to a type behind one of them (pipeline.
// ShipperStatus, tracker.Status, pipeline.Point, journalReport, versionInfo)
// changes the output: review it and rewrite the files with
//
//	go test ./cmd/lifeboat -run Golden -update
//
// The fixtures are fixed values (no clock, no random ids), and the few
// values that depend on the machine (temporary paths, the Go version) are
// replaced by placeholders, so the files are the same on every machine.

var update = flag.Bool("update", false, "rewrite testdata/golden/* from the current output")

// snakeCase is a JSON key as `--output` promises it.
var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// golden compares a command's JSON output with testdata/golden/name, or
// writes the file with -update. The output must be JSON with snake_case
// keys (a check that also covers map keys, which no struct tag names).
func golden(t *testing.T, name, got string) {
	t.Helper()
	var doc any
	if err := json.Unmarshal([]byte(got), &doc); err != nil {
		t.Fatalf("%s: output is not JSON: %v\n%s", name, err, got)
	}
	for _, k := range jsonKeys(doc, "") {
		if !snakeCase.MatchString(k[strings.LastIndex(k, ".")+1:]) {
			t.Errorf("%s: key %s is not snake_case", name, k)
		}
	}
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
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

// jsonKeys lists the object keys of a decoded JSON document as dotted paths.
func jsonKeys(v any, path string) []string {
	var keys []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			keys = append(keys, path+"."+k)
			keys = append(keys, jsonKeys(e, path+"."+k)...)
		}
	case []any:
		for i, e := range v {
			keys = append(keys, jsonKeys(e, fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return keys
}

// firstDiff shows the first line where got departs from want, with a little
// context.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "first difference at line %d:\n", i+1)
	for j := max(0, i-2); j < i+3; j++ {
		if j < len(w) {
			fmt.Fprintf(&b, "  want %4d: %s\n", j+1, w[j])
		}
		if j < len(g) {
			fmt.Fprintf(&b, "  got  %4d: %s\n", j+1, g[j])
		}
	}
	return b.String()
}

// runJSON runs a command in-process and returns its standard output.
func runJSON(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := runApp(t, args...)
	if code != 0 {
		t.Fatalf("lifeboat %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

func TestGoldenVersion(t *testing.T) {
	out := runJSON(t, "version", "--output", "json")
	out = strings.ReplaceAll(out, `"`+runtime.Version()+`"`, `"GO_VERSION"`)
	out = strings.ReplaceAll(out, `"`+runtime.GOOS+"/"+runtime.GOARCH+`"`, `"GOOS/GOARCH"`)
	golden(t, "version.json", out)
}

// jsonDocuments are the Go types behind every `--output json` document, by
// command. A command that gains --output must be added here (the test
// below finds it) and get a golden test.
var jsonDocuments = map[string]any{
	"status": struct {
		Agent []pipeline.ShipperStatus `json:"agent"` // with --journal-dir
		Site  control.SiteStatus       `json:"site"`  // from the configuration server
	}{},
	"machine list":    []control.MachineView{},
	"machine remove":  control.RemovedMachine{},
	"policy create":   control.Policy{},
	"policy update":   control.Policy{},
	"policy show":     control.Policy{},
	"policy list":     []control.Policy{},
	"events":          []control.Event{},
	"jobs":            []control.Job{},
	"job show":        control.Job{},
	"points list":     []pipeline.Point{},
	"volume list":     []pipeline.VolumeStatus{},
	"certs list":      []pki.IssuedCert{},
	"journal inspect": journalReport{},
	"version":         versionInfo{},

	"test-failover start":   pipeline.RecoveryState{},
	"test-failover list":    []pipeline.RecoveryState{},
	"test-failover cleanup": pipeline.RecoveryState{},
	"failover start":        pipeline.RecoveryState{},
	"failover change-point": pipeline.RecoveryState{},
	"failover commit":       pipeline.RecoveryState{},
	"reprotect":             pipeline.RecoveryState{},
	"failback":              pipeline.RecoveryState{},
}

// Every field of every document type, through nested structs, pointers,
// slices and maps, has a snake_case json tag: the guard for fields added
// later, which would otherwise come out as CamelCase.
func TestJSONDocumentsHaveSnakeCaseTags(t *testing.T) {
	for cmd, doc := range jsonDocuments {
		for _, p := range jsonTagProblems(reflect.TypeOf(doc), reflect.TypeOf(doc).String(), map[reflect.Type]bool{}) {
			t.Errorf("lifeboat %s --output json: %s", cmd, p)
		}
	}
	var withOutput []string
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(prefix + " " + c.Name)
			for _, f := range c.Flags {
				if slices.Contains(f.Names(), "output") {
					withOutput = append(withOutput, name)
				}
			}
			walk(name, c.Subcommands)
		}
	}
	walk("", newApp(io.Discard, io.Discard).Commands)
	for _, name := range withOutput {
		if _, ok := jsonDocuments[name]; !ok {
			t.Errorf("lifeboat %s has --output but its document type is not in jsonDocuments (and has no golden test)", name)
		}
	}
	if len(withOutput) != len(jsonDocuments) {
		t.Errorf("commands with --output: %q; jsonDocuments lists %d", withOutput, len(jsonDocuments))
	}
}

// The check itself finds what it must: a missing tag, a CamelCase one, and
// both behind a pointer, a slice and a map.
func TestJSONTagProblemsFindsBadFields(t *testing.T) {
	type inner struct {
		OK      int `json:"ok"`
		NoTag   int
		Camel   int `json:"camelCase"`
		skipped int
		Ignored int `json:"-"`
	}
	type doc struct {
		Ptr   *inner           `json:"ptr"`
		Items []inner          `json:"items"`
		ByKey map[string]inner `json:"by_key"`
		When  time.Time        `json:"when"`
	}
	_ = inner{}.skipped
	got := jsonTagProblems(reflect.TypeFor[doc](), "doc", map[reflect.Type]bool{})
	want := []string{"doc.ptr.NoTag has no json tag", `doc.ptr.Camel: json key "camelCase" is not snake_case`}
	if !slices.Equal(got, want) {
		t.Errorf("problems = %q, want %q", got, want)
	}
}

// jsonTagProblems walks typ as encoding/json would and describes each
// exported field without a snake_case json name. seen stops recursion
// (a type is checked once, where it is first met).
func jsonTagProblems(typ reflect.Type, path string, seen map[reflect.Type]bool) []string {
	switch typ.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return jsonTagProblems(typ.Elem(), path, seen)
	case reflect.Map:
		return jsonTagProblems(typ.Elem(), path+"[]", seen)
	case reflect.Interface:
		return []string{path + " is an interface: its keys cannot be checked"}
	case reflect.Struct:
	default:
		return nil
	}
	marshaler := reflect.TypeFor[json.Marshaler]()
	text := reflect.TypeFor[encoding.TextMarshaler]()
	if seen[typ] || typ.Implements(marshaler) || typ.Implements(text) ||
		reflect.PointerTo(typ).Implements(marshaler) || reflect.PointerTo(typ).Implements(text) {
		return nil // time.Time and the like encode themselves
	}
	seen[typ] = true
	var problems []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case !f.IsExported() && !f.Anonymous, tag == "-":
			continue
		case f.Anonymous && name == "":
			problems = append(problems, jsonTagProblems(f.Type, path, seen)...) // promoted fields
			continue
		case name == "":
			problems = append(problems, fmt.Sprintf("%s.%s has no json tag", path, f.Name))
			continue
		case !snakeCase.MatchString(name):
			problems = append(problems, fmt.Sprintf("%s.%s: json key %q is not snake_case", path, f.Name, name))
			continue
		}
		problems = append(problems, jsonTagProblems(f.Type, path+"."+name, seen)...)
	}
	return problems
}
