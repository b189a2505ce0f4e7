package bundleserve;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The drivers' protocol (tests/sdk_clients/README.md): `op key=value...` arguments in, one JSON object out. A tiny
 * JSON writer keeps the drivers free of any dependency beyond the SDK modules themselves.
 */
final class Wire {
    private Wire() {}

    static Map<String, String> arguments(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 1; i < argv.length; i++) {
            int eq = argv[i].indexOf('=');
            if (eq > 0) {
                args.put(argv[i].substring(0, eq), argv[i].substring(eq + 1));
            }
        }
        return args;
    }

    static Map<String, Object> object() {
        return new LinkedHashMap<>();
    }

    static List<Object> list() {
        return new ArrayList<>();
    }

    static void print(Map<String, Object> answer) {
        StringBuilder out = new StringBuilder();
        write(out, answer);
        System.out.println(out);
    }

    private static void write(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof Number) {
            out.append(value);
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                if (!first) out.append(',');
                first = false;
                write(out, String.valueOf(entry.getKey()));
                out.append(':');
                write(out, entry.getValue());
            }
            out.append('}');
        } else if (value instanceof List<?> items) {
            out.append('[');
            for (int i = 0; i < items.size(); i++) {
                if (i > 0) out.append(',');
                write(out, items.get(i));
            }
            out.append(']');
        } else {
            String text = value.toString();
            out.append('"');
            for (int i = 0; i < text.length(); i++) {
                char c = text.charAt(i);
                if (c == '"' || c == '\\') {
                    out.append('\\').append(c);
                } else if (c < 0x20) {
                    out.append(String.format("\\u%04x", (int) c));
                } else {
                    out.append(c);
                }
            }
            out.append('"');
        }
    }

    /** A typed service error: the SDK's exception class, the error code, status and message it parsed. */
    static Map<String, Object> serviceError(Exception error, String code, int status, String message, Integer original) {
        Map<String, Object> answer = object();
        answer.put("error", error.getClass().getSimpleName());
        answer.put("code", code);
        answer.put("status", status);
        answer.put("message", message);
        answer.put("original_status_code", original);
        return answer;
    }
}
