package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// A role's configuration file (--config FILE) is a YAML mapping whose keys
// are the long names of the command's flags:
//
//	data-dir: /var/lib/lifeboat/server
//	tag-interval: 10s
//	volume: [ "db=/dev/sdb" ]
//
// parseConfigFile only reads the file's shape against the keys it is
// given; applying the values (and the flag's own parsing of them) is
// configapply.go's. Every error names the file and, where there is one,
// the line: a mistake in a service's file must be found without guessing.

// keyKind is what a configuration key takes.
type keyKind int

const (
	kindScalar keyKind = iota // one value: a string, number, duration, size
	kindBool                  // true or false
	kindList                  // a list of values (a repeatable flag); one value is a list of one
)

// fileSetting is one key of a configuration file with its values, as the
// flag would be given them on the command line.
type fileSetting struct {
	Key    string
	Values []string
	Line   int
}

// yamlLine finds the line in the parser's messages ("yaml: line 3: ...").
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseConfigFile reads data (the file name is for messages) as the
// configuration of the role command (e.g. "agent"), whose keys are known.
func parseConfigFile(name string, data []byte, role string, known map[string]keyKind) ([]fileSetting, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty, or only comments
		}
		return nil, yamlError(name, data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, usageError("%s:%d: a second YAML document; put every setting in one mapping", name, max(extra.Line, 1))
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, data, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, nil
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, usageError("%s:%d: want a mapping of settings (key: value), found %s", name, root.Line, describeNode(root))
	}
	var out []fileSetting
	first := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], resolveAlias(root.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return nil, usageError("%s:%d: a key must be a flag's name, found %s", name, k.Line, describeNode(k))
		}
		key := k.Value
		if key == "config" {
			return nil, usageError("%s:%d: key \"config\": a configuration file cannot name another one", name, k.Line)
		}
		kind, ok := known[key]
		if !ok {
			msg := fmt.Sprintf("%s:%d: unknown key %q for lifeboat %s", name, k.Line, key, role)
			if s := suggestKey(key, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return nil, usageError("%s; 'lifeboat config example %s' lists the keys", msg, role)
		}
		if l, dup := first[key]; dup {
			return nil, usageError("%s:%d: key %q is given twice (first on line %d)", name, k.Line, key, l)
		}
		first[key] = k.Line
		vals, err := nodeValues(name, key, kind, v)
		if err != nil {
			return nil, err
		}
		out = append(out, fileSetting{Key: key, Values: vals, Line: k.Line})
	}
	return out, nil
}

// nodeValues turns the value of key into the strings its flag is set to.
func nodeValues(name, key string, kind keyKind, v *yaml.Node) ([]string, error) {
	switch {
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		return nil, usageError("%s:%d: %s has no value: give one, or remove the key for the default", name, v.Line, key)
	case v.Kind == yaml.ScalarNode:
		return []string{v.Value}, nil
	case v.Kind == yaml.SequenceNode && kind != kindList:
		return nil, usageError("%s:%d: %s takes one value, not a list", name, v.Line, key)
	case v.Kind == yaml.SequenceNode:
		if len(v.Content) == 0 {
			return nil, usageError("%s:%d: %s: an empty list; remove the key for the default", name, v.Line, key)
		}
		var vals []string
		for _, e := range v.Content {
			e = resolveAlias(e)
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return nil, usageError("%s:%d: %s: each item must be a single value, found %s", name, e.Line, key, describeNode(e))
			}
			vals = append(vals, e.Value)
		}
		return vals, nil
	default:
		want := "a single value"
		if kind == kindList {
			want = "a value or a list of values"
		}
		return nil, usageError("%s:%d: %s takes %s, found %s", name, v.Line, key, want, describeNode(v))
	}
}

// resolveAlias follows a YAML alias (*name) to the node it names.
func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 8; i++ {
		n = n.Alias
	}
	return n
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing (null)"
		}
		return strconv.Quote(n.Value)
	}
	return "something else"
}

// yamlError turns a parser error into a usage error that names the file
// and the line. The parser's line needs help: it counts from 0 for the
// parser's own problems (not for the scanner's), gives none for line 1,
// and none for a byte that is not text.
func yamlError(name string, data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if parserProblem(msg) {
			line++
		}
	} else if l := firstBadChar(data); l > 0 {
		line = l
	} else if !strings.Contains(msg, "anchor") {
		line = 1
	}
	if line == 0 {
		return usageError("%s: not valid YAML: %s", name, msg)
	}
	n := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		n++
	}
	return usageError("%s:%d: not valid YAML: %s", name, min(line, max(n, 1)), msg)
}

// parserProblem reports whether msg is one of the YAML parser's problems
// (as opposed to the scanner's).
func parserProblem(msg string) bool {
	switch msg {
	case "found duplicate %TAG directive", "found duplicate %YAML directive",
		"found incompatible YAML document", "found undefined tag handle":
		return true
	}
	return strings.HasPrefix(msg, "did not find expected ")
}

// firstBadChar is the line of the first character YAML does not accept
// (invalid UTF-8, a control character), or 0.
func firstBadChar(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size == 1, r < 0x20 && r != '\t' && r != '\n' && r != '\r',
			r >= 0x7f && r <= 0x9f && r != 0x85, r >= 0xd800 && r <= 0xdfff, r == 0xfffe, r == 0xffff:
			return line
		case r == '\n':
			line++
		}
		i += size
	}
	return 0
}

// suggestKey returns the known key closest to key, if one is close enough
// to be a typo of it.
func suggestKey(key string, known map[string]keyKind) string {
	best, bestD := "", len(key)/3+2
	for k := range known {
		if d := editDistance(key, k); d < bestD || (d == bestD && best != "" && k < best) {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b)) // not a typo of a flag name
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
