package main

import (
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// roleCommand is a role command made configurable, with the flags it
// requires (which urfave/cli no longer checks: see makeConfigurable).
type roleCommand struct {
	cmd      *cli.Command
	required []string
}

func configCommand(roles map[string]*roleCommand) *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "print or check the configuration file of a role (agent, server, process-server, master-target)",
		Description: "Every role reads its settings from a YAML file given with --config FILE, as well as from its flags\n" +
			"and LIFEBOAT_* environment variables: a flag on the command line wins over the environment, which\n" +
			"wins over the file, which wins over the default. The file's keys are the flags' long names.\n\n" +
			"Examples:\n" +
			"   lifeboat config example agent > /etc/lifeboat/agent.yaml\n" +
			"   lifeboat config check agent /etc/lifeboat/agent.yaml\n" +
			"   lifeboat agent --config /etc/lifeboat/agent.yaml",
		OnUsageError: onUsageError,
		Action:       unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name:      "example",
				Usage:     "print a commented configuration file for ROLE, every key at its default",
				ArgsUsage: "ROLE",
				Description: "ROLE is agent, server, process-server or master-target. Every key is commented out at its\n" +
					"default, with its help and environment variable: the file is valid and changes nothing until a line\n" +
					"is uncommented. A required key shows the form of its value.\n\n" +
					"Example:\n" +
					"   lifeboat config example server > /etc/lifeboat/server.yaml",
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					args, err := leafArgs(c, 1, "ROLE ("+strings.Join(roleCommands, ", ")+")")
					if err != nil {
						return err
					}
					r, err := lookupRole(roles, args[0])
					if err != nil {
						return err
					}
					return writeExample(c.App.Writer, r)
				},
			},
			configCheckCommand(roles),
		},
	}
}

// lookupRole returns the configurable command called name.
func lookupRole(roles map[string]*roleCommand, name string) (*roleCommand, error) {
	r, ok := roles[name]
	if !ok {
		return nil, usageError("unknown role %q: want one of %s", name, strings.Join(roleCommands, ", "))
	}
	return r, nil
}

// writeExample writes the configuration file of a role with every key
// commented out at its default (or, for a required key, an example of its
// form), so that the file is valid and changes nothing until edited.
func writeExample(w io.Writer, r *roleCommand) error {
	name := r.cmd.Name
	var b strings.Builder
	fmt.Fprintf(&b, "# Configuration of 'lifeboat %s' (written by 'lifeboat config example %s').\n", name, name)
	fmt.Fprintf(&b, "# Use it with: lifeboat %s --config /etc/lifeboat/%s.yaml\n", name, name)
	b.WriteString("#\n" +
		"# Keys are the long names of the command's flags. A flag on the command line wins over its\n" +
		"# environment variable, which wins over this file, which wins over the default. A key that\n" +
		"# is commented out shows its default. Lists take one item per line (\"- item\") or [a, b].\n" +
		"# Durations: 500ms, 10s, 5m, 1h. Sizes: 512KiB, 64MiB, 1GiB. Booleans: true, false.\n")
	for _, f := range r.cmd.Flags {
		fname := f.Names()[0]
		if v, ok := f.(cli.VisibleFlag); fname == "config" || (ok && !v.IsVisible()) {
			continue
		}
		placeholder, usage := "VALUE", ""
		if d, ok := f.(cli.DocGenerationFlag); ok {
			placeholder, usage = unquoteUsage(d.GetUsage())
		}
		b.WriteString("\n")
		required := slices.Contains(r.required, fname)
		for i, line := range strings.Split(usage, "\n") {
			if i == 0 && required {
				line = "Required. " + line
			}
			fmt.Fprintf(&b, "# %s\n", strings.TrimSpace(line))
		}
		fmt.Fprintf(&b, "# Environment: %s\n", strings.Join(flagField(f, "EnvVars").Interface().([]string), ", "))
		vals, isList := defaultValues(f)
		switch {
		case (required || isList) && len(vals) == 0:
			vals = []string{yamlScalar(placeholder)} // an example of its form
		case !isList && len(vals) == 0:
			vals = []string{`""`}
		}
		if isList {
			fmt.Fprintf(&b, "# %s:\n", fname)
			for _, v := range vals {
				fmt.Fprintf(&b, "#   - %s\n", v)
			}
			continue
		}
		fmt.Fprintf(&b, "# %s: %s\n", fname, vals[0])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// defaultValues are a flag's default values as YAML scalars, and whether
// the flag takes a list.
func defaultValues(f cli.Flag) ([]string, bool) {
	isList := flagKind(f) == kindList
	v := flagField(f, "Value")
	if !v.IsValid() {
		if d, ok := f.(cli.DocGenerationFlag); ok && d.GetValue() != "" {
			return []string{yamlScalar(d.GetValue())}, isList
		}
		return nil, isList
	}
	switch x := v.Interface().(type) {
	case string:
		if x == "" {
			return nil, isList
		}
		return []string{yamlScalar(x)}, isList
	case time.Duration:
		return []string{shortDuration(x)}, isList
	case float64:
		return []string{strconv.FormatFloat(x, 'g', -1, 64)}, isList
	case *cli.StringSlice:
		var out []string
		if x != nil {
			for _, s := range x.Value() {
				out = append(out, yamlScalar(s))
			}
		}
		return out, isList
	}
	if v.Kind() == reflect.Pointer && v.IsNil() {
		return nil, isList
	}
	return []string{fmt.Sprint(v.Interface())}, isList // numbers and booleans
}

// yamlScalar writes s as YAML would, quoted only where it must be.
func yamlScalar(s string) string {
	out, err := yaml.Marshal(s)
	if err != nil || strings.Count(string(out), "\n") != 1 {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// shortDuration writes 5m rather than 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// unquoteUsage splits a flag's usage into its `PLACEHOLDER` and the text
// without the backquotes, as urfave/cli's help does.
func unquoteUsage(usage string) (string, string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "VALUE", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "VALUE", usage
	}
	name := usage[i+1 : i+1+j]
	return name, usage[:i] + name + usage[i+2+j:]
}
