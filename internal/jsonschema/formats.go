package jsonschema

import "fmt"

// format returns the content of a string in the named format: exactly
// valid values only (dates with days 29–31 only in months that always have
// them, which leaves out February 29: a subset).
func (c *converter) format(name string) (sym, error) {
	switch name {
	case "date":
		return c.date(), nil
	case "time":
		return c.time(), nil
	case "date-time":
		return c.g.alt("datetime", seq{c.date(), lit("T"), c.time()}), nil
	case "uuid":
		hex := class(newSet(runeRange{'0', '9'}, runeRange{'a', 'f'}))
		return c.g.alt("uuid", seq{hex.rep(8, 8), lit("-"), hex.rep(4, 4), lit("-"), hex.rep(4, 4), lit("-"), hex.rep(4, 4), lit("-"), hex.rep(12, 12)}), nil
	case "email":
		atom := class(newSet(runeRange{'0', '9'}, runeRange{'A', 'Z'}, runeRange{'a', 'z'}, runeRange{'_', '_'}, runeRange{'+', '+'}, runeRange{'-', '-'})).rep(1, 16)
		dotAtom := c.g.alt("atom", seq{lit("."), atom})
		label := class(newSet(runeRange{'0', '9'}, runeRange{'A', 'Z'}, runeRange{'a', 'z'})).rep(1, 20)
		dotLabel := c.g.alt("label", seq{lit("."), label})
		return c.g.alt("email", seq{atom, dotAtom.rep(0, 2), lit("@"), label, dotLabel.rep(1, 3)}), nil
	}
	return sym{}, fmt.Errorf("format %q is not supported (date, time, date-time, uuid and email are)", name)
}

func (c *converter) date() sym {
	return c.g.shared("date", func(i int) {
		d := func(lo, hi rune) sym { return class(newSet(runeRange{lo, hi})) }
		day28 := c.g.alt("day", seq{lit("0"), d('1', '9')}, seq{lit("1"), d('0', '9')}, seq{lit("2"), d('0', '8')})
		long := c.g.alt("m31", seq{lit("01")}, seq{lit("03")}, seq{lit("05")}, seq{lit("07")}, seq{lit("08")}, seq{lit("10")}, seq{lit("12")})
		short := c.g.alt("m30", seq{lit("04")}, seq{lit("06")}, seq{lit("09")}, seq{lit("11")})
		monthDay := c.g.alt("md",
			seq{long, lit("-"), c.g.alt("d31", seq{day28}, seq{lit("29")}, seq{lit("30")}, seq{lit("31")})},
			seq{short, lit("-"), c.g.alt("d30", seq{day28}, seq{lit("29")}, seq{lit("30")})},
			seq{lit("02-"), day28})
		c.g.set(i, seq{d('0', '9').rep(4, 4), lit("-"), monthDay})
	})
}

// time is RFC 3339's full-time: hh:mm:ss, optional fraction, Z or offset.
func (c *converter) time() sym {
	return c.g.shared("time", func(i int) {
		d := func(lo, hi rune) sym { return class(newSet(runeRange{lo, hi})) }
		hour := c.g.alt("hh", seq{d('0', '1'), d('0', '9')}, seq{lit("2"), d('0', '3')})
		minute := c.g.alt("mm", seq{d('0', '5'), d('0', '9')})
		frac := c.g.alt("fs", seq{lit("."), d('0', '9').rep(1, 9)})
		zone := c.g.alt("tz", seq{lit("Z")}, seq{class(newSet(runeRange{'+', '+'}, runeRange{'-', '-'})), hour, lit(":"), minute})
		c.g.set(i, seq{hour, lit(":"), minute, lit(":"), minute, frac.rep(0, 1), zone})
	})
}
