package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// roleCommands are the commands that run a role as a service. Each takes
// its settings from, in this order of precedence: the command line, the
// environment (LIFEBOAT_<FLAG>), the file of --config, the flag's default.
var roleCommands = []string{"agent", "server", "process-server", "master-target"}

// envPrefix starts the environment variable of every role flag.
const envPrefix = "LIFEBOAT_"

// envVarName is the environment variable of a role flag: --data-dir is
// LIFEBOAT_DATA_DIR.
func envVarName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// makeConfigurable gives a role command --config FILE and an environment
// variable for each of its flags. It walks the flags the command has when
// the app is built, so that a flag added to a role later needs nothing
// here. A required flag may come from the file: urfave/cli checks required
// flags before any hook runs, so the check moves after the file is read.
func makeConfigurable(cmd *cli.Command) *roleCommand {
	r := &roleCommand{cmd: cmd}
	for _, f := range cmd.Flags {
		name := f.Names()[0]
		if env := flagField(f, "EnvVars"); env.IsValid() {
			vars := env.Interface().([]string)
			if !slices.Contains(vars, envVarName(name)) {
				env.Set(reflect.ValueOf(append(slices.Clone(vars), envVarName(name))))
			}
		}
		if req := flagField(f, "Required"); req.IsValid() && req.Bool() {
			req.SetBool(false)
			r.required = append(r.required, name)
		}
	}
	cmd.Description += configDescription(cmd)
	cmd.Flags = append([]cli.Flag{&cli.StringFlag{Name: "config", EnvVars: []string{envVarName("config")},
		Usage: "read settings from the YAML `FILE` (keys are these flags' names; a flag or its environment variable wins);\n" +
			"\t'lifeboat config example " + cmd.Name + "' prints one"}}, cmd.Flags...)
	before, action := cmd.Before, cmd.Action
	cmd.Before = func(c *cli.Context) error {
		if c.Args().Present() && cmd.Command(c.Args().First()) != nil {
			// A subcommand (server init) runs with its own flags.
			return callHook(before, c)
		}
		if err := r.load(c); err != nil {
			return err
		}
		return callHook(before, c)
	}
	if action != nil {
		cmd.Action = func(c *cli.Context) error {
			return blameFile(c, action(c))
		}
	}
	return r
}

// load applies the configuration file to the command's flags and checks
// that the required ones are set.
func (r *roleCommand) load(c *cli.Context) error {
	if err := applyConfigFile(c, r.cmd); err != nil {
		return err
	}
	return checkRequired(c, r.required)
}

// configDescription is the paragraph each role's help gets about --config
// and the environment.
func configDescription(cmd *cli.Command) string {
	example := "data-dir"
	for _, f := range cmd.Flags {
		if flagKind(f) == kindScalar {
			example = f.Names()[0]
			break
		}
	}
	return fmt.Sprintf("\n\nSettings: each flag may also be set in the YAML file of --config, as a key of its long name\n"+
		"(%s: VALUE), or in the environment, as LIFEBOAT_ and its name in capitals (%s).\n"+
		"The command line wins over the environment, which wins over the file. 'lifeboat config example %s'\n"+
		"prints a commented file ('make install' writes those of the agent and the servers to /etc/lifeboat for\n"+
		"their systemd units).", example, envVarName(example), cmd.Name)
}

func callHook(h cli.BeforeFunc, c *cli.Context) error {
	if h == nil {
		return nil
	}
	return h(c)
}

// flagField is the settable field name (EnvVars, Required) of one of
// urfave/cli's flag structs, or the zero Value if it has none.
func flagField(f cli.Flag, name string) reflect.Value {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}
	}
	return v.Elem().FieldByName(name)
}

// flagKinds are the keys a configuration file of cmd may hold.
func flagKinds(cmd *cli.Command) map[string]keyKind {
	known := map[string]keyKind{}
	for _, f := range cmd.Flags {
		name := f.Names()[0]
		if name == "config" || f == cli.HelpFlag {
			continue
		}
		known[name] = flagKind(f)
	}
	return known
}

func flagKind(f cli.Flag) keyKind {
	if s, ok := f.(cli.DocGenerationSliceFlag); ok && s.IsSliceFlag() {
		return kindList
	}
	if d, ok := f.(cli.DocGenerationFlag); ok && !d.TakesValue() {
		return kindBool
	}
	return kindScalar
}

// fileSourceKey carries, in the command's context, where each flag set
// from the file was set, for blameFile.
type fileSourceKey struct{}

// applyConfigFile reads --config, if given, and sets each of its keys
// whose flag was not given on the command line or in the environment.
func applyConfigFile(c *cli.Context, cmd *cli.Command) error {
	name := c.String("config")
	if name == "" {
		return nil
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return usageError("--config: %v", err)
	}
	settings, err := parseConfigFile(name, data, cmd.Name, flagKinds(cmd))
	if err != nil {
		return err
	}
	flags := map[string]cli.Flag{}
	for _, f := range cmd.Flags {
		flags[f.Names()[0]] = f
	}
	from := map[string]string{}
	for _, s := range settings {
		if c.IsSet(s.Key) { // true for the command line and the environment
			continue
		}
		for _, v := range s.Values {
			if err := c.Set(s.Key, v); err != nil {
				return usageError("%s:%d: %s: invalid value %q: %s", name, s.Line, s.Key, v, valueHint(flags[s.Key], err))
			}
		}
		from[s.Key] = fmt.Sprintf("%s:%d", name, s.Line)
	}
	c.Context = context.WithValue(c.Context, fileSourceKey{}, from)
	return nil
}

// valueHint says what a flag takes, where the flag package's own error
// ("parse error") does not.
func valueHint(f cli.Flag, err error) string {
	switch f.(type) {
	case *cli.DurationFlag:
		return "want a duration such as 500ms, 10s, 5m or 1h"
	case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
		return "want a whole number"
	case *cli.Float64Flag:
		return "want a number"
	case *cli.BoolFlag:
		return "want true or false"
	}
	return err.Error()
}

// checkRequired is urfave/cli's check of required flags, made after the
// configuration file is applied.
func checkRequired(c *cli.Context, required []string) error {
	for _, name := range required {
		if !c.IsSet(name) {
			return usageError("Required flag %q not set: give --%s, %s or %s: in --config FILE; run '%s --help' for an example",
				name, name, envVarName(name), name, c.Command.HelpName)
		}
	}
	return nil
}

// blameFile adds to a usage error about a flag whose value came from the
// configuration file where in the file it was set: the command checks
// most values (sizes, ranges) itself, after the file was read.
func blameFile(c *cli.Context, err error) error {
	var e *exitError
	if !errors.As(err, &e) || e.code != exitUsage {
		return err
	}
	from, _ := c.Context.Value(fileSourceKey{}).(map[string]string)
	msg := err.Error()
	keys := slices.Sorted(maps.Keys(from))
	for _, key := range keys {
		if mentionsFlag(msg, key) {
			return &exitError{code: e.code, err: fmt.Errorf("%w (%s is set in %s)", err, key, from[key])}
		}
	}
	return err
}

// mentionsFlag reports whether msg names --key (and not a longer flag that
// starts with it).
func mentionsFlag(msg, key string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], "--"+key)
		if j < 0 {
			return false
		}
		end := i + j + 2 + len(key)
		if end == len(msg) || !(msg[end] == '-' || msg[end] >= 'a' && msg[end] <= 'z' || msg[end] >= '0' && msg[end] <= '9') {
			return true
		}
		i = end
	}
}
