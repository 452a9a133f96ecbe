package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// newApp builds the command tree. Output goes to stdout and stderr so tests
// can capture it.
func newApp(stdout, stderr io.Writer) *cli.App {
	roles := map[string]*roleCommand{}
	app := &cli.App{
		Name:  "lifeboat",
		Usage: "continuous block-level replication and site recovery for Linux servers",
		Description: "Lifeboat journals every write to a protected volume, ships the journal to a recovery\n" +
			"site and turns it into recovery points you can test-fail-over, fail over to and fail back from.\n" +
			"Today: the agent, the process server with file and Azure targets, recovery points and their export,\n" +
			"test failover and failover (lifeboat test-failover, lifeboat failover); failback comes next.\n\n" +
			"Examples:\n" +
			"   lifeboat demo\n" +
			"   lifeboat server init --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat server --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat agent --volume db=/dev/sdb --server https://dr.example:9443 --cert web01.crt --key web01.key --ca ca.crt\n" +
			"   lifeboat status\n" +
			"   lifeboat points list --data-dir /var/lib/lifeboat/server --volume db",
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		// --volume NAME=PATH,size=SIZE carries commas of its own.
		DisableSliceFlagSeparator: true,
		Suggest:                   true,
		// Errors are returned to run, never turned into os.Exit here.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Action:         unknownCommand,
		Commands: []*cli.Command{
			versionCommand(),
			agentCommand(),
			statusCommand(),
			serverCommand(),
			machineCommand(),
			policyCommand(),
			processServerCommand(),
			certsCommand(),
			pointsCommand(),
			testFailoverCommand(),
			failoverCommand(),
			reprotectCommand(),
			failbackCommand(),
			masterTargetCommand(),
			eventsCommand(),
			jobsCommand(),
			jobCommand(),
			volumeCommand(),
			journalCommand(),
			demoCommand(),
			configCommand(roles),
		},
	}
	app.Commands = append(app.Commands, protectionCommands()...)
	for _, c := range app.Commands {
		if slices.Contains(roleCommands, c.Name) {
			roles[c.Name] = makeConfigurable(c)
		}
	}
	return app
}

// onUsageError turns a flag parsing error into a usage error (exit 2).
func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageError("%v; run '%s --help' for the flags", err, c.Command.HelpName)
}

// unknownCommand is the action of a command that only groups subcommands:
// without arguments it shows help, with an unknown one it is a usage error.
func unknownCommand(c *cli.Context) error {
	if !c.Args().Present() {
		return cli.ShowSubcommandHelp(c)
	}
	name := c.App.Name
	if c.Command != nil && c.Command.HelpName != "" {
		name = c.Command.HelpName
	}
	return usageError("unknown command %q; run '%s --help' for the list", c.Args().First(), name)
}

// leafArgs checks the positional arguments of a command that takes exactly
// want of them.
func leafArgs(c *cli.Context, want int, what string) ([]string, error) {
	args := c.Args().Slice()
	if len(args) != want {
		return nil, usageError("want %s, got %d argument(s); run '%s --help' for an example",
			what, len(args), c.Command.HelpName)
	}
	return args, nil
}

// outputFlag returns the --output flag of the read commands (a new one
// each time: flags keep state).
func outputFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "output",
		Aliases: []string{"o"},
		Value:   "text",
		Usage:   "`FORMAT`: text for people, json for scripts (stable, snake_case keys)",
	}
}

// printJSON writes v as the indented JSON document of --output json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// adminList is the start of an admin command that lists what GET path
// answers: its --output format, no arguments, the site's answer in out.
func adminList(c *cli.Context, path string, out any) (string, error) {
	format, err := outputFormat(c)
	if err != nil {
		return "", err
	}
	if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
		return "", err
	}
	client, base, err := adminClient(c)
	if err != nil {
		return "", err
	}
	return format, apiCall(c, client, http.MethodGet, base+path, nil, out)
}

// outputFormat returns "text" or "json", rejecting anything else.
func outputFormat(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case "text", "json":
		return f, nil
	default:
		return "", usageError("--output %q: use text or json", f)
	}
}

// permuteArgs moves the flags of the leaf command before its positional
// arguments, so that `lifeboat journal inspect DIR --output json` works as
// people expect (the standard flag parser stops at the first argument).
// Everything after "--" stays positional.
func permuteArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds := app.Commands
	var leaf *cli.Command
	i := 1
	for ; i < len(args); i++ {
		var next *cli.Command
		for _, c := range cmds {
			if c.HasName(args[i]) {
				next = c
			}
		}
		if next == nil {
			break
		}
		out = append(out, args[i])
		leaf, cmds = next, next.Subcommands
	}
	if leaf == nil || len(leaf.Subcommands) > 0 {
		return append(out, args[i:]...)
	}
	var flags, pos []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue && takesValue(leaf, name) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return append(append(out, flags...), pos...)
}

// takesValue reports whether the flag name of cmd needs a value argument.
func takesValue(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}

// plural returns "1 record", "2 records".
func plural(n uint64, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
