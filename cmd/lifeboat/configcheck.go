package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"
)

func configCheckCommand(roles map[string]*roleCommand) *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "read FILE as ROLE's configuration and print the settings it gives, with where each comes from",
		ArgsUsage: "ROLE FILE",
		Description: "Reads FILE as 'lifeboat ROLE --config FILE' would, with the environment's LIFEBOAT_* variables,\n" +
			"and prints every setting as YAML with its source (the file's line, the environment, or the default).\n" +
			"It checks the keys, the kinds of the values, what each flag parses and the required keys; the role\n" +
			"checks the rest (ranges, files, addresses) when it starts. Exit code 2 when the file is wrong.\n\n" +
			"Example:\n" +
			"   lifeboat config check server /etc/lifeboat/server.yaml",
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			args, err := leafArgs(c, 2, "ROLE FILE")
			if err != nil {
				return err
			}
			r, err := lookupRole(roles, args[0])
			if err != nil {
				return err
			}
			// The role's command is not run otherwise in this process: run
			// it alone, as 'lifeboat ROLE --config FILE' with only the
			// loading of its settings and this report for an action.
			r.cmd.Subcommands = nil
			r.cmd.Before = r.load
			r.cmd.Action = func(rc *cli.Context) error { return reportSettings(rc, r.cmd) }
			app := &cli.App{Name: c.App.Name, Writer: c.App.Writer, ErrWriter: c.App.ErrWriter,
				HideHelpCommand: true, DisableSliceFlagSeparator: true, ExitErrHandler: func(*cli.Context, error) {},
				OnUsageError: onUsageError, Commands: []*cli.Command{r.cmd}}
			return app.RunContext(c.Context, []string{c.App.Name, r.cmd.Name, "--config", args[1]})
		},
	}
}

// reportSettings prints every setting of cmd as YAML, with its source as a
// comment.
func reportSettings(c *cli.Context, cmd *cli.Command) error {
	from, _ := c.Context.Value(fileSourceKey{}).(map[string]string)
	w := c.App.Writer
	fmt.Fprintf(w, "# lifeboat %s --config %s: the settings it starts with\n", cmd.Name, c.String("config"))
	for _, f := range cmd.Flags {
		name := f.Names()[0]
		if name == "config" || f == cli.HelpFlag {
			continue
		}
		source := "default"
		if where, ok := from[name]; ok {
			source = where
		} else if env := envSource(f); env != "" {
			source = "environment " + env
		}
		vals := settingValues(c.Value(name))
		if flagKind(f) == kindList {
			if len(vals) == 0 {
				fmt.Fprintf(w, "%s: []  # %s\n", name, source)
				continue
			}
			fmt.Fprintf(w, "%s:  # %s\n", name, source)
			for _, v := range vals {
				fmt.Fprintf(w, "  - %s\n", v)
			}
			continue
		}
		v := `""`
		if len(vals) > 0 {
			v = vals[0]
		}
		fmt.Fprintf(w, "%s: %s  # %s\n", name, v, source)
	}
	return nil
}

// envSource is the environment variable a flag's value came from, if any.
func envSource(f cli.Flag) string {
	env := flagField(f, "EnvVars")
	if !env.IsValid() {
		return ""
	}
	for _, name := range env.Interface().([]string) {
		if _, ok := os.LookupEnv(name); ok {
			return name
		}
	}
	return ""
}

// settingValues writes a flag's value as YAML scalars.
func settingValues(v any) []string {
	var list []string
	switch x := v.(type) {
	case string:
		return []string{yamlScalar(x)}
	case time.Duration:
		return []string{shortDuration(x)}
	case cli.StringSlice:
		list = x.Value()
	case *cli.StringSlice:
		if x != nil {
			list = x.Value()
		}
	case []string:
		list = x
	case nil:
		return nil
	default:
		return []string{fmt.Sprint(v)} // numbers and booleans
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = yamlScalar(s)
	}
	return out
}
