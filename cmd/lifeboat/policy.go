package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
)

// policyFieldFlags are the fields of a policy; defaults only for create.
func policyFieldFlags(defaults bool) []cli.Flag {
	d := control.DefaultPolicy
	dur := func(name string, def control.Seconds, usage string) cli.Flag {
		f := &cli.DurationFlag{Name: name, Usage: usage}
		if defaults {
			f.Value = def.Duration()
		}
		return f
	}
	str := func(name, def, usage string) cli.Flag {
		f := &cli.StringFlag{Name: name, Usage: usage}
		if defaults {
			f.Value = def
		}
		return f
	}
	r := func(x [2]time.Duration) string { return fmt.Sprintf("%v to %v", x[0], x[1]) }
	return []cli.Flag{
		dur("rpo-threshold", d.RPOThreshold, "raise a Warning when an item's RPO passes this `LONG` ("+r(control.RangeRPOThreshold)+"); it only alerts"),
		dur("retention", d.Retention, "keep recovery points this `LONG` ("+r(control.RangeRetention)+"), thinned on a tiered schedule"),
		dur("crash-interval", d.CrashInterval, "take a crash-consistent recovery point this `OFTEN` ("+r(control.RangeCrashInterval)+")"),
		str("compression", d.Compression, "zstd `LEVEL` on the wire: none, fastest, default, better or best"),
		str("encryption-key", d.EncryptionKey, "`REF`: \"\" (as the target stores it) or site (the replica must be encrypted with the key the site's target holds)"),
		dur("failback-rpo-threshold", 0, "the failback policy's RPO threshold (default: --rpo-threshold)"),
		dur("failback-crash-interval", 0, "the failback policy's crash-consistent interval (default: --crash-interval)"),
	}
}

func secondsOf(d time.Duration) control.Seconds { return control.Seconds(d / time.Second) }

// policyRanges are the allowed ranges of the policy's duration flags.
var policyRanges = map[string][2]time.Duration{
	"rpo-threshold": control.RangeRPOThreshold, "retention": control.RangeRetention, "crash-interval": control.RangeCrashInterval,
	"failback-rpo-threshold": control.RangeRPOThreshold, "failback-crash-interval": control.RangeCrashInterval,
}

// checkWholeSeconds refuses a duration flag given with a fraction of a
// second: policies keep whole seconds, and the server would otherwise see
// a value other than the one typed.
func checkWholeSeconds(c *cli.Context) error {
	for _, f := range []string{"rpo-threshold", "retention", "crash-interval", "failback-rpo-threshold", "failback-crash-interval"} {
		if d := c.Duration(f); c.IsSet(f) && d%time.Second != 0 {
			r := policyRanges[f]
			return usageError("--%s %v: allowed range %v to %v, in whole seconds", f, d, r[0], r[1])
		}
	}
	return nil
}

func policyCommand() *cli.Command {
	nameArg := func(c *cli.Context) (string, error) {
		a, err := leafArgs(c, 1, "the policy's name")
		if err != nil {
			return "", err
		}
		return a[0], nil
	}
	return &cli.Command{
		Name:  "policy",
		Usage: "create, list, show, update and delete replication policies",
		Description: "A policy says how its items are replicated: how often a crash-consistent point is taken, how long\n" +
			"points are kept, the wire compression, whether the replica must be encrypted with the site's key,\n" +
			"and the RPO past which an item's health turns Warning. Each policy has a failback policy, created with\n" +
			"it, for the reverse direction after a reprotect. Out-of-range values are refused with the allowed range.\n\n" +
			"Examples:\n" +
			"   lifeboat policy create gold --rpo-threshold 5m --retention 72h --crash-interval 5s\n" +
			"   lifeboat policy update gold --retention 168h\n" +
			"   lifeboat policy show gold --output json",
		Action: unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a policy and its failback policy", ArgsUsage: "NAME",
				Flags: append(append(siteFlags(), outputFlag()), policyFieldFlags(true)...), OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					name, err := nameArg(c)
					if err != nil {
						return err
					}
					if err := checkWholeSeconds(c); err != nil {
						return err
					}
					p := control.Policy{Name: name, RPOThreshold: secondsOf(c.Duration("rpo-threshold")), Retention: secondsOf(c.Duration("retention")),
						CrashInterval: secondsOf(c.Duration("crash-interval")), Compression: c.String("compression"), EncryptionKey: c.String("encryption-key")}
					if c.IsSet("failback-rpo-threshold") {
						p.Failback.RPOThreshold = secondsOf(c.Duration("failback-rpo-threshold"))
					}
					if c.IsSet("failback-crash-interval") {
						p.Failback.CrashInterval = secondsOf(c.Duration("failback-crash-interval"))
					}
					return policyAnswer(c, http.MethodPost, "/policies", p)
				},
			},
			{
				Name: "update", Usage: "change the fields given of a policy", ArgsUsage: "NAME",
				Flags: append(append(siteFlags(), outputFlag()), policyFieldFlags(false)...), OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					name, err := nameArg(c)
					if err != nil {
						return err
					}
					if err := checkWholeSeconds(c); err != nil {
						return err
					}
					var ch control.PolicyChange
					sec := func(flag string) *control.Seconds {
						if !c.IsSet(flag) {
							return nil
						}
						s := secondsOf(c.Duration(flag))
						return &s
					}
					str := func(flag string) *string {
						if !c.IsSet(flag) {
							return nil
						}
						s := c.String(flag)
						return &s
					}
					ch.RPOThreshold, ch.Retention, ch.CrashInterval = sec("rpo-threshold"), sec("retention"), sec("crash-interval")
					ch.Compression, ch.EncryptionKey = str("compression"), str("encryption-key")
					if c.IsSet("failback-rpo-threshold") || c.IsSet("failback-crash-interval") {
						ch.Failback = &control.FailbackPolicyChange{RPOThreshold: sec("failback-rpo-threshold"), CrashInterval: sec("failback-crash-interval")}
					}
					if ch == (control.PolicyChange{}) {
						return usageError("nothing to change: give at least one of the policy's flags (see --help)")
					}
					return policyAnswer(c, http.MethodPatch, "/policies/"+url.PathEscape(name), ch)
				},
			},
			{
				Name: "show", Usage: "show a policy", ArgsUsage: "NAME",
				Flags: append(siteFlags(), outputFlag()), OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					name, err := nameArg(c)
					if err != nil {
						return err
					}
					return policyAnswer(c, http.MethodGet, "/policies/"+url.PathEscape(name), nil)
				},
			},
			{
				Name: "list", Usage: "list the policies",
				Flags: append(siteFlags(), outputFlag()), OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					var ps []control.Policy
					if done, err := siteList(c, fixed("/policies"), &ps); done || err != nil {
						return err
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "POLICY\tRPO THRESHOLD\tRETENTION\tCRASH INTERVAL\tCOMPRESSION\tENCRYPTION")
					for _, p := range ps {
						fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%s\t%s\n", p.Name, p.RPOThreshold.Duration(), p.Retention.Duration(),
							p.CrashInterval.Duration(), p.Compression, orNone(p.EncryptionKey))
					}
					return tw.Flush()
				},
			},
			{
				Name: "delete", Usage: "delete a policy no item uses", ArgsUsage: "NAME",
				Flags: siteFlags(), OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					name, err := nameArg(c)
					if err != nil {
						return err
					}
					if err := siteCall(c, http.MethodDelete, "/policies/"+url.PathEscape(name), nil, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "deleted policy %s\n", name)
					return nil
				},
			},
		},
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// policyAnswer sends a policy request and prints the policy answered.
func policyAnswer(c *cli.Context, method, path string, body any) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	var p control.Policy
	if err := siteCall(c, method, path, body, &p); err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, p)
	}
	printPolicy(c.App.Writer, p)
	return nil
}

func printPolicy(w io.Writer, p control.Policy) {
	fmt.Fprintf(w, "policy %s\n  rpo threshold:   %v (alert only)\n  retention:       %v\n  crash interval:  %v\n"+
		"  compression:     %s\n  encryption key:  %s\n  failback policy: %s (rpo threshold %v, crash interval %v)\n",
		p.Name, p.RPOThreshold.Duration(), p.Retention.Duration(), p.CrashInterval.Duration(), p.Compression, orNone(p.EncryptionKey),
		p.Failback.Name, p.Failback.RPOThreshold.Duration(), p.Failback.CrashInterval.Duration())
}
