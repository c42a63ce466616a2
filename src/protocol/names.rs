//! State names as data: each machine maps every state to a name with an
//! exhaustive `match`, and the macro below gives each name list an `ALL`
//! constant. Fault points (`crate::fault`) are generated from these lists, so
//! a new state gets a fault point the moment it gets a name, and the list
//! cannot drift from the machines.

/// Defines a fieldless enum of state names with `ALL` and `as_str`.
macro_rules! state_names {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),*
        }

        impl $name {
            /// Every name, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name as written in logs, events and fault specs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use state_names;
